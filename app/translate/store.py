"""Stored responses (`store: true`): what `GET /v1/responses/{id}` and `previous_response_id` read.

A record holds the response object and the chat conversation that led to it (with the answer), so a
later request continues it over a chat-completions upstream. Records are scoped to the credential
that made them (`owner`: the access guard's subject): another client gets a 404. Bounded three ways:
items (RESPONSES_STORE_MAX_ITEMS), bytes (RESPONSES_STORE_MAX_BYTES) and age (RESPONSES_STORE_TTL_SECONDS).

One store per process, in one of three forms:
- `RedisResponseStore` (REDIS_URL set): one key per response, `<REDIS_PREFIX>response:<id>`, with the
  TTL; shared by every worker and replica. Calls are bounded by REDIS_TIMEOUT_SECONDS and skipped
  for a back-off after a failure (`app.access.limits.Circuit`); then a read misses and a write is lost.
- `SharedFileStore` (PROMETHEUS_MULTIPROC_DIR set, as under Gunicorn): an SQLite file there, shared
  by the workers of one host (a follow-up request may reach another worker), opened on first use.
- `MemoryResponseStore`: this process's memory, an LRU.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import orjson

from ..body import right_sized
from .settings import MAX_BYTES, MAX_ITEMS, TTL_SECONDS, StoreBounds

log = logging.getLogger("cot_proxy.translate")


class ResponseStore:
    """The interface: `put` a record, `get` it back for its owner, `delete` it."""

    kind = "none"

    def __init__(
        self,
        max_items: int = MAX_ITEMS,
        max_bytes: int = MAX_BYTES,
        ttl: float = TTL_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.ttl = ttl
        self.clock = clock

    def put(self, response_id: str, owner: str, record: dict[str, Any]) -> bool:
        """Keep `record`; False when it was not kept (too large, or the shared store is down)."""
        raw = orjson.dumps({"owner": owner, **record})
        if len(raw) > self.max_bytes:
            log.warning("response %s not stored: %d bytes, over RESPONSES_STORE_MAX_BYTES", response_id, len(raw))
            return False
        return self._put(response_id, right_sized(raw))  # kept: its length is what the bounds count

    def get(self, response_id: str, owner: str) -> dict[str, Any] | None:
        raw = self._get(response_id)
        if raw is None:
            return None
        record = orjson.loads(raw)
        return record if record.get("owner") == owner else None

    def delete(self, response_id: str, owner: str) -> bool:
        if self.get(response_id, owner) is None:
            return False
        self._delete(response_id)
        return True

    def _put(self, response_id: str, raw: bytes) -> bool:
        raise NotImplementedError

    def _get(self, response_id: str) -> bytes | None:
        raise NotImplementedError

    def _delete(self, response_id: str) -> None:
        raise NotImplementedError


class MemoryResponseStore(ResponseStore):
    kind = "memory"

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self._items: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def _put(self, response_id: str, raw: bytes) -> bool:
        with self._lock:
            self._drop(response_id)
            self._items[response_id] = (self.clock() + self.ttl, raw)
            self._bytes += len(raw)
            while len(self._items) > self.max_items or self._bytes > self.max_bytes:
                self._drop(next(iter(self._items)))
        return True

    def _drop(self, response_id: str) -> None:
        old = self._items.pop(response_id, None)
        if old is not None:
            self._bytes -= len(old[1])

    def _get(self, response_id: str) -> bytes | None:
        with self._lock:
            entry = self._items.get(response_id)
            if entry is None:
                return None
            if entry[0] <= self.clock():
                self._drop(response_id)
                return None
            self._items.move_to_end(response_id)
            return entry[1]

    def _delete(self, response_id: str) -> None:
        with self._lock:
            self._drop(response_id)


class SharedFileStore(ResponseStore):
    """The SQLite file of this host's workers (app/translate/sqlite_store.py), opened on the first call:
    `sqlite3` costs a worker about 1.3 MiB of RSS, which a proxy that never stores a response need not
    pay. A file that cannot be used then is logged once, and this worker keeps responses in memory."""

    kind = "file"

    def __init__(self, directory: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.directory = directory
        self._limits = kw
        self._opened: ResponseStore | None = None
        self._lock = threading.Lock()

    def opened(self) -> ResponseStore:
        if self._opened is None:
            with self._lock:
                if self._opened is None:
                    self._opened = self._open()
        return self._opened

    def _open(self) -> ResponseStore:
        from .sqlite_store import FileResponseStore, sqlite3

        try:
            return FileResponseStore(self.directory, **self._limits)
        except sqlite3.Error as exc:
            log.warning(
                "response store: cannot use %s (%s); keeping responses in this worker's memory", self.directory, exc
            )
            return MemoryResponseStore(**self._limits)

    def _put(self, response_id: str, raw: bytes) -> bool:
        return self.opened()._put(response_id, raw)

    def _get(self, response_id: str) -> bytes | None:
        return self.opened()._get(response_id)

    def _delete(self, response_id: str) -> None:
        self.opened()._delete(response_id)


class RedisResponseStore(ResponseStore):
    kind = "redis"

    def __init__(self, url: str, prefix: str = "cot-proxy:", timeout: float = 0.25, **kw: Any) -> None:
        super().__init__(**kw)
        import redis

        from ..access.limits import Circuit, redis_client

        self._errors = (redis.RedisError, OSError)
        self.client = redis_client(url, timeout)  # connects on first use only
        self.prefix = prefix + "response:"
        self.circuit = Circuit("Redis (response store)", logger=log)

    def _call(self, fn: Callable[[], Any]) -> Any:
        if not self.circuit.allow():
            raise ConnectionError("circuit open")
        try:
            result = fn()
        except self._errors as exc:
            self.circuit.failed(exc)
            raise ConnectionError(str(exc)) from None
        self.circuit.succeeded()
        return result

    def _put(self, response_id: str, raw: bytes) -> bool:
        try:
            self._call(lambda: self.client.set(self.prefix + response_id, raw, ex=max(int(self.ttl), 1)))
            return True
        except ConnectionError:
            log.warning("response %s not stored: Redis unavailable", response_id)
            return False

    def _get(self, response_id: str) -> bytes | None:
        try:
            return self._call(lambda: self.client.get(self.prefix + response_id))
        except ConnectionError:
            return None

    def _delete(self, response_id: str) -> None:
        try:
            self._call(lambda: self.client.delete(self.prefix + response_id))
        except ConnectionError:
            pass


def make_store(
    bounds: StoreBounds, redis_url: str | None, redis_prefix: str, redis_timeout: float, shared_dir: str | None
) -> ResponseStore:
    """The store this process uses (Redis, a file shared by this host's workers, or memory)."""
    limits = {"max_items": bounds.max_items, "max_bytes": bounds.max_bytes, "ttl": bounds.ttl}
    if redis_url:
        return RedisResponseStore(redis_url, redis_prefix, redis_timeout, **limits)
    if shared_dir:
        return SharedFileStore(shared_dir, **limits)
    return MemoryResponseStore(**limits)

"""What the think step learned about models: does the chat template pre-fill the start tag?

`think_prefilled=auto` (the default) asks this store per request: True (the model's
answers start inside the reasoning block), False (they do not), or None (not known
yet: the think step holds back the start of a stream; app/transforms/think.py).

One store per process, in one of three forms:
- `RedisPrefillStore` (REDIS_URL set): one sorted set, `<REDIS_PREFIX>think-prefill`,
  shared by every worker and replica. Member = model name; score = the time it was
  learned in milliseconds, times two, plus 1 if it pre-fills (the value rides in the
  score's parity, so one ZADD writes it atomically and one key holds everything).
  Every call is bounded by REDIS_TIMEOUT_SECONDS, and after a failure Redis is skipped
  for a back-off (`app.access.limits.Circuit`): this worker then keeps its own view.
  When the rate limiter uses the same Redis, its client and circuit are used (`adopt`).
- `FilePrefillStore` (PROMETHEUS_MULTIPROC_DIR set, as under Gunicorn): a small JSON
  file there, shared by the workers of one host, rewritten under a lock.
- `PrefillStore`: this worker's memory only.

Each keeps a local copy (an LRU of at most `MAX_MODELS` entries) and asks the shared
form again about a model at most every `SYNC_SECONDS`. Entries expire `TTL_SECONDS`
after they were last learned or confirmed; the shared forms keep the newest
`MAX_MODELS`. A model learned (new, or changed) is logged once by the process that
learned it and counted in `cot_proxy_think_prefill_learned_total`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("cot_proxy.think")

MAX_MODELS = 1000
MAX_NAME = 256
"""Longer model names are not learned (no upstream answers to such a name in practice)."""
TTL_SECONDS = 7 * 86400.0
CONFIRM_SECONDS = 86400.0
"""An answer that agrees with an entry older than this writes it again (renewing its TTL)."""
SYNC_SECONDS = 2.0
"""How long a worker trusts its copy of an entry (or of an absence) before asking the shared store."""
SHARED_FILE = "cot_proxy_think_prefill.json"


@dataclass
class Entry:
    prefilled: bool
    learned_at: float
    """Wall-clock seconds (shared between hosts)."""
    checked: float = 0.0
    """Monotonic seconds: when this copy was last read from (or written to) the shared store."""
    published: bool = True
    """False while the shared store has not taken it (it was unreachable): written again later."""


class Unavailable(Exception):
    """The shared store cannot be asked now (down, timed out, or skipped by its circuit)."""


class PrefillStore:
    """This process's view, in memory; subclasses share it (`_fetch`, `_publish`, `_fetch_all`)."""

    kind = "memory"

    def __init__(
        self,
        max_models: int = MAX_MODELS,
        ttl: float = TTL_SECONDS,
        wall: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
        on_learned: Callable[[str, bool], None] | None = None,
    ) -> None:
        self.max_models = max_models
        self.ttl = ttl
        self.wall = wall
        self.clock = clock
        self.on_learned = on_learned
        self._local: OrderedDict[str, Entry] = OrderedDict()
        self._misses: OrderedDict[str, float] = OrderedDict()
        """Models the shared store did not know, and when it was asked (bounded like `_local`)."""
        self._lock = threading.Lock()
        self._known: tuple[float, list[dict[str, Any]]] | None = None

    @property
    def shared(self) -> bool:
        return type(self)._fetch is not PrefillStore._fetch

    # -- the interface the think step uses ---------------------------------------------

    def get(self, model: str | None) -> bool | None:
        """True / False as learned, None when unknown (or the name cannot be learned)."""
        if not _learnable(model):
            return None
        assert model is not None
        now = self.clock()
        with self._lock:
            entry = self._local.get(model)
            if entry is not None and self.wall() - entry.learned_at > self.ttl:
                del self._local[model]
                entry = None
            if entry is not None and (not self.shared or now - entry.checked < SYNC_SECONDS):
                self._local.move_to_end(model)
                return entry.prefilled
            if entry is None and (not self.shared or now - self._misses.get(model, -SYNC_SECONDS) < SYNC_SECONDS):
                return None
        try:
            fetched = self._fetch(model)  # outside the lock: may wait for Redis (bounded by its timeout)
        except Unavailable:
            fetched = entry and (entry.prefilled, entry.learned_at)  # this worker's own view stands
        republish = False
        with self._lock:
            if not fetched and entry is not None and not entry.published:
                fetched, republish = (entry.prefilled, entry.learned_at), True
            if not fetched or self.wall() - fetched[1] > self.ttl:
                self._local.pop(model, None)
                self._remember_miss(model, now)
                return None
            self._put(model, Entry(fetched[0], fetched[1], now, published=not republish))
            self._misses.pop(model, None)
        if republish:  # learned while the shared store was away: share it now
            self._mark(model, self._publish(model, fetched[0], fetched[1]))
        return fetched[0]

    def learn(self, model: str | None, prefilled: bool) -> bool:
        """Record what an answer showed; True if that is news to this process (logged, counted)."""
        if not _learnable(model):
            return False
        assert model is not None
        now, wall = self.clock(), self.wall()
        with self._lock:
            entry = self._local.get(model)
            if entry is not None and entry.prefilled == prefilled and wall - entry.learned_at < CONFIRM_SECONDS:
                return False
            news = entry is None or entry.prefilled != prefilled
            self._put(model, Entry(prefilled, wall, now))
            self._known = None
            self._misses.pop(model, None)
        self._mark(model, self._publish(model, prefilled, wall))
        if news:
            log.info(
                "think: model %r %s (learned from an answer; think_prefilled=auto)",
                model,
                "pre-fills the start tag: its answers start inside the reasoning"
                if prefilled
                else "does not pre-fill the start tag: its streams are not held back",
            )
            if self.on_learned is not None:
                self.on_learned(model, prefilled)
        return news

    def _mark(self, model: str, published: bool) -> None:
        with self._lock:
            found = self._local.get(model)
            if found is not None:
                found.published = published

    def known(self) -> list[dict[str, Any]]:
        """Every live entry, newest first: for GET /v1/metadata (an open endpoint, so the shared store
        is read at most once per SYNC_SECONDS however often it is asked)."""
        if not self.shared:
            return self._read_known()
        now = self.clock()
        cached = self._known
        if cached is not None and now - cached[0] < SYNC_SECONDS:
            return cached[1]
        out = self._read_known()
        self._known = (now, out)
        return out

    def _read_known(self) -> list[dict[str, Any]]:
        wall = self.wall()
        entries = self._fetch_all()
        if entries is None:
            with self._lock:
                entries = {m: (e.prefilled, e.learned_at) for m, e in self._local.items()}
        live = [(at, m, p) for m, (p, at) in entries.items() if wall - at <= self.ttl]
        live.sort(reverse=True)
        return [{"model": m, "prefilled": p, "learned_at": int(at)} for at, m, p in live[: self.max_models]]

    # -- local bookkeeping -------------------------------------------------------------

    def _put(self, model: str, entry: Entry) -> None:
        self._local[model] = entry
        self._local.move_to_end(model)
        while len(self._local) > self.max_models:
            self._local.popitem(last=False)

    def _remember_miss(self, model: str, now: float) -> None:
        self._misses[model] = now
        self._misses.move_to_end(model)
        while len(self._misses) > self.max_models:
            self._misses.popitem(last=False)

    # -- the shared form (none here) ---------------------------------------------------

    def _fetch(self, model: str) -> tuple[bool, float] | None:
        """(prefilled, learned_at) from the shared store, None if it has none; raise `Unavailable`."""
        return None

    def _publish(self, model: str, prefilled: bool, learned_at: float) -> bool:
        """Write to the shared store; False if it could not be written."""
        return True

    def _fetch_all(self) -> dict[str, tuple[bool, float]] | None:
        """Everything in the shared store, or None to use the local copy."""
        return None


class RedisPrefillStore(PrefillStore):
    kind = "redis"

    def __init__(self, url: str, prefix: str = "cot-proxy:", timeout: float = 0.25, **kw: Any) -> None:
        super().__init__(**kw)
        import redis

        from ..access.limits import Circuit, redis_client

        self._errors = (redis.RedisError, OSError)
        self.url = url
        self.client = redis_client(url, timeout)  # connects on first use only
        self.key = prefix + "think-prefill"
        self.circuit = Circuit("Redis (think prefill)", logger=log)

    def adopt(self, client: Any, circuit: Any) -> None:
        """Use another component's client and circuit for the same Redis (the rate limiter's), so a
        hung Redis costs this worker one timeout in all, not one per component."""
        self.client, self.circuit = client, circuit

    def _fetch(self, model: str) -> tuple[bool, float] | None:
        if not self.circuit.allow():
            raise Unavailable
        try:
            score = self.client.zscore(self.key, model)
        except self._errors as exc:
            self.circuit.failed(exc)
            raise Unavailable from None
        self.circuit.succeeded()
        return None if score is None else _unpack(score)

    def _publish(self, model: str, prefilled: bool, learned_at: float) -> bool:
        if not self.circuit.allow():
            return False
        try:
            pipe = self.client.pipeline(transaction=True)
            pipe.zadd(self.key, {model: _pack(prefilled, learned_at)})
            pipe.zremrangebyscore(self.key, "-inf", f"({_pack(False, learned_at - self.ttl)}")
            pipe.zremrangebyrank(self.key, 0, -self.max_models - 1)
            pipe.pexpire(self.key, int(self.ttl * 1000))
            pipe.execute()
        except self._errors as exc:
            self.circuit.failed(exc)
            return False
        self.circuit.succeeded()
        return True

    def _fetch_all(self) -> dict[str, tuple[bool, float]] | None:
        if not self.circuit.allow():
            return None
        try:
            rows = self.client.zrange(self.key, 0, -1, withscores=True)
        except self._errors as exc:
            self.circuit.failed(exc)
            return None
        self.circuit.succeeded()
        out = {}
        for member, score in rows:
            name = member.decode("utf-8", "replace") if isinstance(member, bytes) else str(member)
            out[name] = _unpack(score)
        return out


class FilePrefillStore(PrefillStore):
    """A JSON object {model: [prefilled, learned_at]} in a directory the workers share."""

    kind = "file"

    def __init__(self, directory: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.path = os.path.join(directory, SHARED_FILE)
        self._seen: tuple[int, int] | None = None
        self._data: dict[str, tuple[bool, float]] = {}

    def _fetch(self, model: str) -> tuple[bool, float] | None:
        self._reload()
        return self._data.get(model)

    def _publish(self, model: str, prefilled: bool, learned_at: float) -> bool:
        try:
            with self._locked():
                data = self._read()
                data[model] = (prefilled, learned_at)
                keep = sorted(((at, m, p) for m, (p, at) in data.items() if learned_at - at <= self.ttl), reverse=True)[
                    : self.max_models
                ]
                data = {m: (p, at) for at, m, p in keep}
                tmp = f"{self.path}.{os.getpid()}.tmp"
                with open(tmp, "w", encoding="utf-8") as fh:
                    json.dump({m: [p, at] for m, (p, at) in data.items()}, fh)
                os.replace(tmp, self.path)
            self._data, self._seen = data, None
        except OSError as exc:
            log.warning("think: cannot share what was learned about %r: %s", model, exc)
            return False
        return True

    def _fetch_all(self) -> dict[str, tuple[bool, float]] | None:
        self._reload()
        return dict(self._data)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.path + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _reload(self) -> None:
        try:
            st = os.stat(self.path)
        except OSError:
            self._data, self._seen = {}, None
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._seen:
            self._data, self._seen = self._read(), stamp

    def _read(self) -> dict[str, tuple[bool, float]]:
        try:
            with open(self.path, encoding="utf-8") as fh:
                raw = json.load(fh)
        except (OSError, ValueError):
            return {}
        out: dict[str, tuple[bool, float]] = {}
        if isinstance(raw, dict):
            for model, value in list(raw.items())[: self.max_models * 2]:
                if (
                    _learnable(model)
                    and isinstance(value, list)
                    and len(value) == 2
                    and isinstance(value[0], bool)
                    and isinstance(value[1], (int, float))
                ):
                    out[model] = (value[0], float(value[1]))
        return out


def make_store(
    redis_url: str | None, redis_prefix: str, redis_timeout: float, shared_dir: str | None, **kw: Any
) -> PrefillStore:
    """Redis if configured, else the shared directory if there is one, else memory."""
    if redis_url:
        return RedisPrefillStore(redis_url, redis_prefix, redis_timeout, **kw)
    if shared_dir:
        return FilePrefillStore(shared_dir, **kw)
    return PrefillStore(**kw)


def _learnable(model: str | None) -> bool:
    return isinstance(model, str) and 0 < len(model) <= MAX_NAME


def _pack(prefilled: bool, learned_at: float) -> int:
    return int(learned_at * 1000) * 2 + (1 if prefilled else 0)


def _unpack(score: float) -> tuple[bool, float]:
    value = int(score)
    return bool(value & 1), (value >> 1) / 1000.0

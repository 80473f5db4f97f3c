"""Open requests of every worker, for the Live page, and cancels that reach the right worker.

`LiveRequests` is a transform: `admit` registers the exchange, `done` drops it (and notes
per-backend latencies and failures for the Backends page). Each worker publishes a snapshot
(its open requests and its router's view of the backends) every `WRITE_SECONDS` while it has
open requests, every `HEARTBEAT_SECONDS` otherwise; a console request on any worker reads them
all. A cancel for another worker's request is queued for that worker, which looks for its own
every `POLL_SECONDS` and calls `Exchange.cancel()`. Two channels carry both:

- `RedisChannel` (REDIS_URL set): keys under REDIS_PREFIX, so every replica's workers are seen;
- `DirChannel` (embedded): a directory shared by one Gunicorn instance, below the Prometheus
  multiprocess directory the observability package prepares (`w-<worker>.json`, `cancel-<id>`).

Without either (one process) everything stays in memory. Neither is ever on a request's path:
only the background loop and console requests touch them.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import secrets
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..exchange import Exchange
from ..observability.exposition import multiprocess_dir
from ..redact import hint
from ..transforms.base import Transform

log = logging.getLogger("cot_proxy.ui")

POLL_SECONDS = 0.25
"""How often a worker looks for cancels of its requests (the upstream is closed within 1 s)."""
WRITE_SECONDS = 0.5
"""How often a worker with open requests rewrites its snapshot (ages and byte counts move)."""
HEARTBEAT_SECONDS = 5.0
STALE_SECONDS = 20.0
"""A snapshot older than this belongs to a worker that is gone (or stuck): not shown."""
LATENCY_SAMPLES = 200
RECENT_FAILURES = 10
SUBDIR = "cot_proxy_ui_live"
MAX_WORKERS = 256
"""Snapshots read at most (a bound on a console request's work)."""
LIVE_ID = re.compile(r"([0-9a-f]{8})-([0-9]{1,12})")
"""`<worker>-<n>`: the worker's random tag (pids repeat across replicas) and a counter."""


def shared_dir() -> Path | None:
    base = multiprocess_dir()
    if not base:
        return None
    path = Path(base) / SUBDIR
    path.mkdir(parents=True, exist_ok=True)
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Channel:
    """Where workers publish snapshots and queue cancels for each other."""

    def publish(self, worker: str, snap: dict[str, Any]) -> None:
        raise NotImplementedError

    def snapshots(self) -> list[dict[str, Any]]:
        """Every live worker's latest snapshot (stale ones left out)."""
        raise NotImplementedError

    def send_cancel(self, worker: str, live_id: str) -> None:
        raise NotImplementedError

    def take_cancels(self, worker: str) -> list[str]:
        raise NotImplementedError


class DirChannel(Channel):
    """One file per worker in a directory the instance's workers share."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def publish(self, worker: str, snap: dict[str, Any]) -> None:
        path = self.directory / f"w-{worker}.json"
        tmp = self.directory / f".w-{worker}-{threading.get_ident()}.tmp"  # the loop and a request may both write
        try:
            tmp.write_text(json.dumps(snap, separators=(",", ":")))
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("console: writing %s failed: %s", path, exc)

    def snapshots(self) -> list[dict[str, Any]]:
        now = time.time()
        out = []
        for path in sorted(self.directory.glob("w-*.json"))[:MAX_WORKERS]:
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # being replaced, or gone
            if not isinstance(data, dict) or now - float(data.get("written_at", 0)) > STALE_SECONDS:
                pid = data.get("pid") if isinstance(data, dict) else None
                if not isinstance(pid, int) or not _alive(pid):
                    path.unlink(missing_ok=True)
                continue
            out.append(data)
        return out

    def send_cancel(self, worker: str, live_id: str) -> None:
        (self.directory / f"cancel-{live_id}").write_text("")

    def take_cancels(self, worker: str) -> list[str]:
        out = []
        for path in self.directory.glob(f"cancel-{worker}-*"):
            path.unlink(missing_ok=True)
            out.append(path.name.removeprefix("cancel-"))
        return out


class RedisChannel(Channel):
    """Snapshots as keys that expire (`<prefix>ui:live:w:<worker>`), cancels as a list per worker."""

    def __init__(self, url: str, prefix: str, timeout: float) -> None:
        from ..access.limits import redis_client

        self.client = redis_client(url, timeout)
        self.prefix = prefix + "ui:live:"

    def publish(self, worker: str, snap: dict[str, Any]) -> None:
        self.client.set(self.prefix + "w:" + worker, json.dumps(snap, separators=(",", ":")), ex=int(STALE_SECONDS))

    def snapshots(self) -> list[dict[str, Any]]:
        keys = []
        for key in self.client.scan_iter(match=self.prefix + "w:*", count=100):
            keys.append(key)
            if len(keys) >= MAX_WORKERS:
                break
        out = []
        for raw in self.client.mget(keys) if keys else ():
            try:
                data = json.loads(raw) if raw else None
            except ValueError:
                continue
            if isinstance(data, dict):
                out.append(data)
        return out

    def send_cancel(self, worker: str, live_id: str) -> None:
        key = self.prefix + "cancel:" + worker
        pipe = self.client.pipeline()
        pipe.rpush(key, live_id)
        pipe.expire(key, 60)
        pipe.execute()

    def take_cancels(self, worker: str) -> list[str]:
        key = self.prefix + "cancel:" + worker
        pipe = self.client.pipeline()
        pipe.lrange(key, 0, 99)
        pipe.ltrim(key, 100, -1)
        ids, _ = pipe.execute()
        return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]


class BackendStats:
    """What this worker saw of one backend: latencies, failures with their reasons."""

    def __init__(self) -> None:
        self.requests = 0
        self.failed = 0
        self.latencies_ms: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self.recent_failures: deque[dict[str, Any]] = deque(maxlen=RECENT_FAILURES)

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "failed": self.failed,
            "latencies_ms": list(self.latencies_ms),
            "recent_failures": list(self.recent_failures),
        }


class LiveRequests(Transform):
    """The registry of this worker's open exchanges (admit -> done)."""

    name = "ui_live"

    def __init__(
        self, redis_url: str | None = None, redis_prefix: str = "cot-proxy:", redis_timeout: float = 0.25
    ) -> None:
        self.pid = os.getpid()
        self.worker = secrets.token_hex(4)
        """This worker's tag in live ids and channel keys (pids repeat across replicas)."""
        self._ids = itertools.count(1)
        self._open: dict[str, tuple[Exchange, dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self.backends: dict[str, BackendStats] = {}
        self.backend_state: Callable[[], dict[str, Any]] | None = None
        """Set by the console: this worker's router view of its backends (health, ejections)."""
        self._redis = (redis_url, redis_prefix, redis_timeout) if redis_url else None
        self._channel: Channel | None = None
        self._channel_checked = False
        self._channel_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._dirty = True
        self._last_write = 0.0
        self._failed_logged = -1e9

    # -- the transform --------------------------------------------------------

    def admit(self, ex: Exchange) -> None:
        identity = ex.identity
        credential = ex.headers.get("authorization") or ex.headers.get("x-api-key") or ex.headers.get("api-key")
        live_id = f"{self.worker}-{next(self._ids)}"
        info = {
            "id": live_id,
            "request_id": ex.request_id,
            "api": ex.api or ex.family,
            "method": ex.method,
            "path": "/v1/" + ex.path,
            "model": ex.client_model,
            "key": hint(credential),
            "key_name": getattr(identity, "name", None) if getattr(identity, "kind", "") == "key" else None,
            "started_at": time.time(),
            "streaming": ex.streaming,
            "pid": self.pid,
            "worker": self.worker,
        }
        ex.state[self.name] = live_id
        with self._lock:
            self._open[live_id] = (ex, info)
            self._dirty = True
        self._ensure_loop()

    def done(self, ex: Exchange) -> None:
        live_id = ex.state.get(self.name)
        with self._lock:
            if live_id is not None:
                self._open.pop(live_id, None)
            self._dirty = True
            self._note_backends(ex)

    def _note_backends(self, ex: Exchange) -> None:
        now = time.time()
        for target, reason in ex.outcome.failures:
            stats = self._stats(target)
            if stats is not None:
                stats.requests += 1
                stats.failed += 1
                stats.recent_failures.append({"at": now, "reason": reason, "request_id": ex.request_id})
        stats = self._stats(ex.target)
        if stats is None:
            return
        stats.requests += 1
        o = ex.outcome
        if o.error and o.error not in ("client_disconnected", "cancelled") or o.status >= 500:
            stats.failed += 1
            stats.recent_failures.append(
                {"at": now, "reason": o.error or f"http_{o.status}", "request_id": ex.request_id}
            )
        else:
            stats.latencies_ms.append(round(o.duration * 1000, 1))

    def _stats(self, target: Any) -> BackendStats | None:
        origin = getattr(target, "origin", None)
        if not origin:
            return None
        return self.backends.setdefault(origin, BackendStats())

    # -- this worker's view ---------------------------------------------------

    def entries(self) -> list[dict[str, Any]]:
        now = time.time()
        out = []
        with self._lock:
            items = list(self._open.values())
        for ex, info in items:
            target = ex.target
            out.append(
                {
                    **info,
                    "age_s": round(now - info["started_at"], 1),
                    "bytes_out": getattr(ex.outcome, "bytes_out", None),
                    "provider": ex.outcome.attempts[-1] if ex.outcome.attempts else None,
                    "backend": getattr(target, "origin", None) if target is not None else None,
                    "streamed": ex.outcome.streamed,
                    "cancelled": bool(getattr(ex, "cancelled", False)),
                }
            )
        return out

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            backends = {origin: s.as_dict() for origin, s in self.backends.items()}
        state = {}
        if self.backend_state is not None:
            try:
                state = self.backend_state()
            except Exception:
                log.exception("console: reading the router's backend state failed")
        return {
            "pid": self.pid,
            "worker": self.worker,
            "written_at": time.time(),
            "live": self.entries(),
            "backends": backends,
            "router": state,
        }

    def cancel_local(self, live_id: str) -> bool:
        with self._lock:
            found = self._open.get(live_id)
        if found is None:
            return False
        found[0].cancel()
        return True

    # -- every worker ---------------------------------------------------------

    @property
    def channel(self) -> Channel | None:
        """Redis with REDIS_URL, else the instance's shared directory, else None (one process)."""
        if not self._channel_checked:
            with self._channel_lock:
                if not self._channel_checked:
                    try:
                        if self._redis is not None:
                            self._channel = RedisChannel(*self._redis)
                        elif (directory := shared_dir()) is not None:
                            self._channel = DirChannel(directory)
                    except Exception as exc:  # no redis package, an unwritable directory
                        log.warning("console: no shared live channel (%s); the Live page shows this worker only", exc)
                    self._channel_checked = True
        return self._channel

    def _guarded(self, what: str, call: Callable[[], Any], default: Any) -> Any:
        """A channel call that may fail (Redis down): logged at most every 10 s, `default` instead."""
        try:
            return call()
        except Exception as exc:
            now = time.monotonic()
            if now - self._failed_logged >= 10.0:
                self._failed_logged = now
                log.warning("console: %s failed (%s: %s); showing this worker only", what, type(exc).__name__, exc)
            return default

    def snapshots(self) -> list[dict[str, Any]]:
        """Every worker's snapshot, this one's fresh."""
        own = self.snapshot()
        channel = self.channel
        if channel is None:
            return [own]
        self._publish(own)
        others = self._guarded("reading the live snapshots", channel.snapshots, [])
        return [own, *(s for s in others if s.get("worker") != self.worker)]

    def _publish(self, snap: dict[str, Any]) -> None:
        channel = self.channel
        if channel is not None:
            self._guarded("publishing the live snapshot", lambda: channel.publish(self.worker, snap), None)

    def cancel(self, live_id: str) -> bool:
        """Cancel an open request of any worker; False if no worker has it."""
        if self.cancel_local(live_id):
            return True
        m = LIVE_ID.fullmatch(live_id)
        channel = self.channel
        if m is None or channel is None:
            return False
        worker = m.group(1)
        for snap in self.snapshots():
            if snap.get("worker") == worker and any(e.get("id") == live_id for e in snap.get("live", ())):
                channel.send_cancel(worker, live_id)
                return True
        return False

    def _ensure_loop(self) -> None:
        if self._thread is None and self.channel is not None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, args=(weakref.ref(self), self._stop), name="cot-proxy-ui-live", daemon=True
                    )
                    self._thread.start()

    def start(self) -> None:
        """Publish this worker's snapshot (and watch for cancels) from now on, not only after a request."""
        self._ensure_loop()

    def stop(self) -> None:
        self._stop.set()

    @staticmethod
    def _run(ref: weakref.ref[LiveRequests], stop: threading.Event) -> None:
        """The worker's loop; it ends with its registry (a discarded app leaves no loop behind)."""
        while not stop.is_set():
            registry = ref()
            if registry is None:
                return
            registry._round()
            del registry
            stop.wait(POLL_SECONDS)

    def _round(self) -> None:
        try:
            self.take_cancels()
            now = time.monotonic()
            busy = bool(self._open) or self._dirty
            if (busy and now - self._last_write >= WRITE_SECONDS) or now - self._last_write >= HEARTBEAT_SECONDS:
                self._dirty = False
                self._publish(self.snapshot())
                self._last_write = now
        except Exception:  # the loop must outlive any one bad round
            log.exception("console: live registry round failed")

    def take_cancels(self) -> None:
        channel = self.channel
        if channel is None:
            return
        for live_id in self._guarded("reading cancels", lambda: channel.take_cancels(self.worker), []):
            if self.cancel_local(live_id):
                log.info("console: request %s cancelled by an operator", live_id)

"""Open requests of every worker, for the Live page, and cancels that reach the right worker.

`LiveRequests` is a transform: `admit` registers the exchange, `done` drops it (and notes
per-backend latencies and failures for the Backends page). Under Gunicorn each worker
writes a snapshot file (`w-<pid>.json`) into a directory shared by the instance, below the
Prometheus multiprocess directory the observability package prepares; a console request on
any worker reads them all. A cancel for another worker's request is a file
`cancel-<pid>-<n>` there: each worker looks for its own every `POLL_SECONDS` and calls
`Exchange.cancel()`. Without that directory (one process) everything stays in memory.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..exchange import Exchange
from ..observability.exposition import multiprocess_dir
from ..observability.logformat import key_hint
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


class BackendStats:
    """What this worker saw of one backend: latencies, failures with their reasons."""

    def __init__(self) -> None:
        self.requests = 0
        self.failed = 0
        self.latencies_ms: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self.recent_failures: deque[dict[str, Any]] = deque(maxlen=RECENT_FAILURES)

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "failed": self.failed, "latencies_ms": list(self.latencies_ms),
                "recent_failures": list(self.recent_failures)}


class LiveRequests(Transform):
    """The registry of this worker's open exchanges (admit -> done)."""

    name = "ui_live"

    def __init__(self) -> None:
        self.pid = os.getpid()
        self._ids = itertools.count(1)
        self._open: dict[str, tuple[Exchange, dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self.backends: dict[str, BackendStats] = {}
        self.backend_state: Callable[[], dict[str, Any]] | None = None
        """Set by the console: this worker's router view of its backends (health, ejections)."""
        self._dir: Path | None = None
        self._dir_checked = False
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._dirty = True

    # -- the transform --------------------------------------------------------

    def admit(self, ex: Exchange) -> None:
        identity = ex.identity
        credential = ex.headers.get("authorization") or ex.headers.get("x-api-key") or ex.headers.get("api-key")
        live_id = f"{self.pid}-{next(self._ids)}"
        info = {"id": live_id, "request_id": ex.request_id, "api": ex.api or ex.family, "method": ex.method,
                "path": "/v1/" + ex.path, "model": ex.client_model, "key": key_hint(credential),
                "key_name": getattr(identity, "name", None) if getattr(identity, "kind", "") == "key" else None,
                "started_at": time.time(), "streaming": ex.streaming, "pid": self.pid}
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
            stats.recent_failures.append({"at": now, "reason": o.error or f"http_{o.status}",
                                          "request_id": ex.request_id})
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
            out.append({**info, "age_s": round(now - info["started_at"], 1),
                        "bytes_out": getattr(ex.outcome, "bytes_out", None),
                        "provider": ex.outcome.attempts[-1] if ex.outcome.attempts else None,
                        "backend": getattr(target, "origin", None) if target is not None else None,
                        "streamed": ex.outcome.streamed, "cancelled": bool(getattr(ex, "cancelled", False))})
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
        return {"pid": self.pid, "written_at": time.time(), "live": self.entries(), "backends": backends,
                "router": state}

    def cancel_local(self, live_id: str) -> bool:
        with self._lock:
            found = self._open.get(live_id)
        if found is None:
            return False
        found[0].cancel()
        return True

    # -- the instance ---------------------------------------------------------

    @property
    def directory(self) -> Path | None:
        if not self._dir_checked:
            self._dir_checked = True
            try:
                self._dir = shared_dir()
            except OSError as exc:
                log.warning("console: no shared live directory (%s); the Live page shows this worker only", exc)
        return self._dir

    def snapshots(self) -> list[dict[str, Any]]:
        """Every worker's snapshot, this one's fresh; dead or stale workers' files are left out."""
        own = self.snapshot()
        out = [own]
        directory = self.directory
        if directory is None:
            return out
        self._write(own)
        now = time.time()
        for path in sorted(directory.glob("w-*.json"))[:256]:
            try:
                pid = int(path.stem[2:])
            except ValueError:
                continue
            if pid == self.pid:
                continue
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # being replaced, or gone
            if not isinstance(data, dict) or now - float(data.get("written_at", 0)) > STALE_SECONDS:
                if not _alive(pid):
                    path.unlink(missing_ok=True)
                continue
            out.append(data)
        return out

    def cancel(self, live_id: str) -> bool:
        """Cancel an open request of any worker of this instance; False if no worker has it."""
        if self.cancel_local(live_id):
            return True
        pid_text, _, n = live_id.partition("-")
        if not (pid_text.isdigit() and n.isdigit()) or self.directory is None:
            return False
        for snap in self.snapshots():
            if snap.get("pid") == int(pid_text) and any(e.get("id") == live_id for e in snap.get("live", ())):
                (self.directory / f"cancel-{live_id}").write_text("")
                return True
        return False

    def _write(self, snap: dict[str, Any]) -> None:
        directory = self.directory
        if directory is None:
            return
        path = directory / f"w-{self.pid}.json"
        tmp = directory / f".w-{self.pid}-{threading.get_ident()}.tmp"  # the loop and a request may both write
        try:
            tmp.write_text(json.dumps(snap, separators=(",", ":")))
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("console: writing %s failed: %s", path, exc)

    def _ensure_loop(self) -> None:
        if self._thread is None and self.directory is not None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="cot-proxy-ui-live", daemon=True)
                    self._thread.start()

    def start(self) -> None:
        """Publish this worker's snapshot (and watch for cancels) from now on, not only after a request."""
        self._ensure_loop()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        last_write = 0.0
        while not self._stop.is_set():
            try:
                self._take_cancels()
                now = time.monotonic()
                busy = bool(self._open) or self._dirty
                if (busy and now - last_write >= WRITE_SECONDS) or now - last_write >= HEARTBEAT_SECONDS:
                    self._dirty = False
                    self._write(self.snapshot())
                    last_write = now
            except Exception:  # the loop must outlive any one bad round
                log.exception("console: live registry round failed")
            self._stop.wait(POLL_SECONDS)

    def _take_cancels(self) -> None:
        directory = self.directory
        if directory is None:
            return
        for path in directory.glob(f"cancel-{self.pid}-*"):
            live_id = path.name.removeprefix("cancel-")
            path.unlink(missing_ok=True)
            if self.cancel_local(live_id):
                log.info("console: request %s cancelled by an operator", live_id)

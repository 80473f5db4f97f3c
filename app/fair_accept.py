"""New connections spread evenly over Gunicorn's gevent workers.

Why: the workers share one listening socket and whichever wakes first accepts. Keep-alive clients
keep the split a burst of connects made: under `wrk -c32` one worker held 23 connections and the
other 9 once the upstream transport got fast, and the busy worker's requests waited four times as
long (p99 335 ms, against the naive relay's 80).

Each worker counts its open connections in a small block of shared memory that the master maps
before forking (one slot per worker; the master hands out slots and clears a dead worker's). A
worker holding more than the least loaded live worker plus `MARGIN` leaves a new connection to the
others for `DEFER_SECONDS`, at most `MAX_DEFERS` times in a row, then accepts it anyway: a busy or
stuck lighter worker costs a connection at most a few milliseconds.

Master: `create(slots)` in `on_starting`, `assign(server, worker)` in `pre_fork`, `release(worker)`
in `child_exit`. Worker: `install(worker)` in `post_fork` (gevent workers only; no-op otherwise).
"""

from __future__ import annotations

import mmap
import struct
from typing import Any

SLOT = struct.Struct("qq")  # alive (0/1), open connections
MARGIN = 2
DEFER_SECONDS = 0.001
MAX_DEFERS = 3

_shm: mmap.mmap | None = None
_slots = 0


def create(slots: int) -> None:
    """In the master, before any fork: the shared block the workers inherit."""
    global _shm, _slots
    if _shm is None:
        _slots = max(1, slots)
        _shm = mmap.mmap(-1, SLOT.size * _slots)  # anonymous and shared: forked workers see one block


def assign(server: Any, worker: Any) -> None:
    """In the master, before forking `worker`: the lowest slot no live worker holds."""
    if _shm is None:
        return
    taken = {getattr(w, "cot_slot", None) for w in server.WORKERS.values()}
    slot = next((i for i in range(_slots) if i not in taken), None)
    worker.cot_slot = slot
    if slot is not None:
        SLOT.pack_into(_shm, slot * SLOT.size, 1, 0)


def release(worker: Any) -> None:
    """In the master, once `worker` exited: its slot neither counts nor looks light."""
    slot = getattr(worker, "cot_slot", None)
    if _shm is not None and slot is not None:
        SLOT.pack_into(_shm, slot * SLOT.size, 0, 0)


def install(worker: Any) -> None:
    """In a gevent worker: Gunicorn's StreamServer becomes the fair one."""
    slot = getattr(worker, "cot_slot", None)
    if _shm is None or slot is None or _slots < 2:
        return
    from gunicorn.workers import ggevent

    if not issubclass(ggevent.StreamServer, _Fair):
        ggevent.StreamServer = type("StreamServer", (_Fair, ggevent.StreamServer), {"cot_slot": slot})


def counts() -> list[int | None]:
    """Open connections per slot (None: no live worker there)."""
    if _shm is None:
        return []
    out: list[int | None] = []
    for i in range(_slots):
        alive, n = SLOT.unpack_from(_shm, i * SLOT.size)
        out.append(n if alive else None)
    return out


class _Fair:
    """Mixed in before gevent's StreamServer."""

    cot_slot: int
    _deferred = 0
    _open = 0

    def do_read(self: Any) -> Any:
        if self._deferred < MAX_DEFERS and self._heavier():
            self._deferred += 1
            self.stop_accepting()  # the listener stays readable for the other workers
            self._timer = self.loop.timer(DEFER_SECONDS)
            self._timer.start(self._start_accepting_if_started)
            return None
        self._deferred = 0
        accepted = super().do_read()  # type: ignore[misc]
        if accepted:
            self._count(+1)
        return accepted

    def do_close(self: Any, *args: Any) -> None:
        self._count(-1)
        super().do_close(*args)  # type: ignore[misc]

    def _count(self, delta: int) -> None:
        self._open = max(0, self._open + delta)
        assert _shm is not None
        SLOT.pack_into(_shm, self.cot_slot * SLOT.size, 1, self._open)

    def _heavier(self) -> bool:
        if self._open <= MARGIN:  # no worker holds fewer than none: no need to read the others
            return False
        lightest = min((n for n in counts() if n is not None), default=self._open)
        return self._open > lightest + MARGIN

"""MAX_CONCURRENT_REQUESTS: at most N requests in flight per worker; the rest wait, boundedly.

A request that finds every slot taken waits up to QUEUE_TIMEOUT_SECONDS for
one. At most MAX_QUEUED_REQUESTS wait at once; past that, or after the
timeout, the answer is 503 `overloaded` with Retry-After. Memory stays
bounded: a waiter is one greenlet (or thread) and a counter, nothing more.

`threading` primitives are greenlet-aware once gevent has patched the worker,
so a waiting request blocks only its own greenlet.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable

from ..errors import Overloaded

log = logging.getLogger("cot_proxy.guard")


class SlotQueue:
    def __init__(self, slots: int, max_waiting: int, timeout: float) -> None:
        self.slots = slots
        self.max_waiting = max_waiting
        self.timeout = timeout
        self._sem = threading.Semaphore(slots)
        self._lock = threading.Condition(threading.Lock())
        """Guards the counters; notified whenever they change (see `wait_until`)."""
        self._waiting = 0
        self._in_use = 0

    @property
    def waiting(self) -> int:
        return self._waiting

    @property
    def in_use(self) -> int:
        return self._in_use

    def acquire(self) -> None:
        """Take a slot, waiting if need be; raise `Overloaded` if none comes in time."""
        if not self._sem.acquire(blocking=False):
            with self._lock:
                if self._waiting >= self.max_waiting:
                    raise self._overloaded("the wait queue is full")
                self._waiting += 1
                self._lock.notify_all()
            try:
                got = self.timeout > 0 and self._sem.acquire(timeout=self.timeout)
            finally:
                with self._lock:
                    self._waiting -= 1
                    self._lock.notify_all()
            if not got:
                raise self._overloaded(f"no slot freed within {self.timeout:g} s")
        with self._lock:
            self._in_use += 1
            self._lock.notify_all()

    def release(self) -> None:
        with self._lock:
            self._in_use -= 1
            self._lock.notify_all()
        self._sem.release()

    def wait_until(self, predicate: Callable[[SlotQueue], bool], timeout: float) -> bool:
        """Block until `predicate(self)` holds (checked on every change), at most `timeout` seconds."""
        with self._lock:
            return self._lock.wait_for(lambda: predicate(self), timeout)

    def _overloaded(self, why: str) -> Overloaded:
        log.warning("refused with 503: %d requests in flight, %s", self.slots, why)
        retry = str(max(1, math.ceil(self.timeout)))
        return Overloaded(
            f"The proxy is at capacity ({self.slots} concurrent requests per worker, {why}). Retry shortly.",
            headers={"Retry-After": retry},
        )

"""A backend server at run time: its target, load, and health (passive circuit breaker).

State is per worker: in-flight counts and ejections are what this worker saw.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..upstream import Target


@dataclass(eq=False)
class Backend:
    target: Target
    weight: int = 1
    failure_threshold: int = 3
    cooldown_seconds: float = 30.0
    in_flight: int = 0
    failures: int = 0
    down_until: float = 0.0
    probe_up: bool | None = None
    """Last active probe result (None: never probed)."""
    on_eject: Callable[[Backend], None] | None = None
    """Told when this worker takes the backend out (to share it, see shared.py)."""
    on_end: Callable[[Backend], None] | None = None
    """Told when a request here ends (the provider then reads answers' usage, see providers.py)."""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def healthy(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        return now >= self.down_until and self.probe_up is not False

    def begin(self) -> None:
        with self._lock:
            self.in_flight += 1

    def end(self) -> None:
        with self._lock:
            self.in_flight = max(0, self.in_flight - 1)
        if self.on_end is not None:
            self.on_end(self)

    def record(self, ok: bool) -> None:
        """Passive health: N failures in a row take the backend out for a cool-down;
        after it, a single failure takes it out again until a success."""
        with self._lock:
            if ok:
                self.failures = 0
                self.down_until = 0.0
                return
            self.failures += 1
            if self.failures < self.failure_threshold:
                return
            self.down_until = time.monotonic() + self.cooldown_seconds
            self.failures = self.failure_threshold - 1  # half-open after the cool-down
        if self.on_eject is not None:
            self.on_eject(self)

    def state(self) -> dict[str, object]:
        return {
            "url": self.target.origin,
            "up": self.healthy(),
            "in_flight": self.in_flight,
            "consecutive_failures": self.failures,
            "probe": {None: "unknown", True: "up", False: "down"}[self.probe_up],
        }

"""The Overview's series: this worker samples the instance's aggregated metrics into two rings.

Every worker reads the same sums (the multiprocess files of every worker, exposition.py), so
whichever worker answers a console request has the whole instance's series. Each tick keeps
the cumulative counters; a point is the difference between two ticks: requests/s, error rate,
p50/p99 latency and time to first chunk (from histogram buckets, as Prometheus'
`histogram_quantile` interpolates), tokens in and out. Last hour at 10 s, last day at 5 min.
In memory only: a worker that just started has a short history.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..observability import exposition as names

log = logging.getLogger("cot_proxy.ui")

HOUR_STEP = 10.0
DAY_STEP = 300.0
HOUR_POINTS = 360
DAY_POINTS = 288


@dataclass
class Snapshot:
    """Cumulative sums over every worker at one moment."""

    at: float
    requests: float = 0.0
    errors: float = 0.0
    prompt_tokens: float = 0.0
    completion_tokens: float = 0.0
    duration: dict[float, float] = field(default_factory=dict)
    """Histogram bucket upper bound -> cumulative count (summed over label sets)."""
    ttfb: dict[float, float] = field(default_factory=dict)
    requests_active: float = 0.0
    streams_active: float = 0.0


def read_snapshot(families: Iterable[Any], at: float) -> Snapshot:
    """Sum the samples a scrape gives (`registry.collect()`) into one `Snapshot`."""
    snap = Snapshot(at=at)
    for family in families:
        for s in family.samples:
            name, labels, value = s.name, s.labels, s.value
            if name == names.REQUESTS + "_total":
                snap.requests += value
            elif name == names.REQUEST_ERRORS + "_total":
                snap.errors += value
            elif name == names.TOKENS + "_total" and labels.get("type") == "prompt":
                snap.prompt_tokens += value
            elif name == names.TOKENS + "_total" and labels.get("type") == "completion":
                snap.completion_tokens += value
            elif name in (names.DURATION + "_bucket", names.TTFB + "_bucket"):
                le = float(labels.get("le", "inf"))
                target = snap.duration if name.startswith(names.DURATION) else snap.ttfb
                target[le] = target.get(le, 0.0) + value
            elif name == names.REQUESTS_IN_FLIGHT:
                snap.requests_active += value
            elif name == names.STREAMS_IN_FLIGHT:
                snap.streams_active += value
    return snap


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """`histogram_quantile` over cumulative bucket counts (upper bound -> count); None without data."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    total = buckets[bounds[-1]]
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for b in bounds:
        count = buckets[b]
        if count >= rank:
            if math.isinf(b):
                return prev_bound  # beyond the last finite bucket: its bound, as Prometheus does
            if count == prev_count:
                return b
            return prev_bound + (b - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = b, count
    return prev_bound


def _delta(new: dict[float, float], old: dict[float, float]) -> dict[float, float]:
    return {le: max(0.0, v - old.get(le, 0.0)) for le, v in new.items()}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def point(old: Snapshot, new: Snapshot) -> dict[str, Any]:
    """One chart point for the interval between two snapshots (a counter reset counts as 0)."""
    dt = max(new.at - old.at, 1e-6)
    requests = max(0.0, new.requests - old.requests)
    errors = max(0.0, new.errors - old.errors)
    duration, ttfb = _delta(new.duration, old.duration), _delta(new.ttfb, old.ttfb)
    return {
        "t": round(new.at, 3),
        "rps": round(requests / dt, 4),
        "requests": int(round(requests)),
        "error_rate": round(errors / requests, 4) if requests else 0.0,
        "p50_ms": _ms(quantile(0.5, duration)),
        "p99_ms": _ms(quantile(0.99, duration)),
        "ttfc_p50_ms": _ms(quantile(0.5, ttfb)),
        "ttfc_p99_ms": _ms(quantile(0.99, ttfb)),
        "tokens_in": int(round(max(0.0, new.prompt_tokens - old.prompt_tokens))),
        "tokens_out": int(round(max(0.0, new.completion_tokens - old.completion_tokens))),
    }


class Ring:
    """Points at a fixed step: each is the difference to the snapshot one step before."""

    def __init__(self, step: float, size: int) -> None:
        self.step = step
        self.points: deque[dict[str, Any]] = deque(maxlen=size)
        self.base: Snapshot | None = None

    def offer(self, snap: Snapshot) -> None:
        if self.base is None:
            self.base = snap
        elif snap.at - self.base.at >= self.step * 0.95:  # a late tick still closes its step
            self.points.append(point(self.base, snap))
            self.base = snap


class Sampler:
    """Ticks every `HOUR_STEP` seconds in a daemon thread (a greenlet under gevent)."""

    def __init__(self, collect: Callable[[], Iterable[Any]], clock: Callable[[], float] = time.time) -> None:
        self._collect = collect
        self._clock = clock
        self.hour = Ring(HOUR_STEP, HOUR_POINTS)
        self.day = Ring(DAY_STEP, DAY_POINTS)
        self.latest: Snapshot | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self) -> Snapshot:
        snap = read_snapshot(self._collect(), self._clock())
        with self._lock:
            self.latest = snap
            self.hour.offer(snap)
            self.day.offer(snap)
        return snap

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="cot-proxy-ui-sampler", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # a bad scrape must not end the sampler
                log.exception("console sampler: reading the metrics failed")
            self._stop.wait(HOUR_STEP)

    def series(self, span: str) -> dict[str, Any]:
        """`span` is `hour` or `day`: the ring's points, plus the current (partial) interval."""
        ring = self.hour if span == "hour" else self.day
        now = read_snapshot(self._collect(), self._clock())
        with self._lock:
            points = list(ring.points)
            base = ring.base
        if base is not None and now.at - base.at >= 1.0:
            points.append({**point(base, now), "partial": True})
        return {"span": span, "step_seconds": ring.step, "points": points,
                "requests_active": int(round(now.requests_active)), "streams_active": int(round(now.streams_active)),
                "totals": {"requests": int(round(now.requests)), "errors": int(round(now.errors)),
                           "tokens_in": int(round(now.prompt_tokens)), "tokens_out": int(round(now.completion_tokens))}}

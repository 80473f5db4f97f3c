"""The Overview's series: this worker samples the instance's aggregated metrics into two rings.

Every worker reads the same sums (the multiprocess files of every worker, exposition.py), so
whichever worker answers a console request has the whole instance's series. Each tick keeps
the cumulative counters; a point is the difference between two ticks: requests/s, error rate,
p50/p99 latency and time to first chunk (from histogram buckets, as Prometheus'
`histogram_quantile` interpolates), tokens in and out. Last hour at 10 s, last day at 5 min.
In memory only: a worker that just started has a short history.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import weakref
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


def delta(old: Snapshot, new: Snapshot, step: float = HOUR_STEP) -> dict[str, Any]:
    """What happened between two snapshots, as raw sums (JSON-ready; a counter reset counts as 0).
    Raw so that deltas of several instances add up (Redis), percentiles included."""
    return {
        "t": round(new.at, 3),
        "step": int(old.at // step),
        "dt": round(max(new.at - old.at, 1e-6), 3),
        "requests": max(0.0, new.requests - old.requests),
        "errors": max(0.0, new.errors - old.errors),
        "tokens_in": max(0.0, new.prompt_tokens - old.prompt_tokens),
        "tokens_out": max(0.0, new.completion_tokens - old.completion_tokens),
        "duration": {repr(le): v for le, v in _delta(new.duration, old.duration).items()},
        "ttfb": {repr(le): v for le, v in _delta(new.ttfb, old.ttfb).items()},
    }


def merge(deltas: list[dict[str, Any]]) -> dict[str, Any]:
    """Several instances' deltas of one step: counts and buckets add up; time is the longest."""
    out: dict[str, Any] = {
        "t": max(d["t"] for d in deltas),
        "step": deltas[0]["step"],
        "dt": max(d["dt"] for d in deltas),
        "duration": {},
        "ttfb": {},
    }
    for name in ("requests", "errors", "tokens_in", "tokens_out"):
        out[name] = sum(d[name] for d in deltas)
    for hist in ("duration", "ttfb"):
        for d in deltas:
            for le, v in d[hist].items():
                out[hist][le] = out[hist].get(le, 0.0) + v
    return out


def render(d: dict[str, Any]) -> dict[str, Any]:
    """A chart point from a delta."""
    duration = {float(le): v for le, v in d["duration"].items()}
    ttfb = {float(le): v for le, v in d["ttfb"].items()}
    requests = d["requests"]
    return {
        "t": d["t"],
        "rps": round(requests / d["dt"], 4),
        "requests": int(round(requests)),
        "error_rate": round(d["errors"] / requests, 4) if requests else 0.0,
        "p50_ms": _ms(quantile(0.5, duration)),
        "p99_ms": _ms(quantile(0.99, duration)),
        "ttfc_p50_ms": _ms(quantile(0.5, ttfb)),
        "ttfc_p99_ms": _ms(quantile(0.99, ttfb)),
        "tokens_in": int(round(d["tokens_in"])),
        "tokens_out": int(round(d["tokens_out"])),
    }


def point(old: Snapshot, new: Snapshot) -> dict[str, Any]:
    """One chart point for the interval between two snapshots."""
    return render(delta(old, new))


class Ring:
    """Deltas at a fixed step, closed when a sample crosses a step boundary (aligned to the clock, so
    every worker and instance closes the same steps and Redis can add them up)."""

    def __init__(self, step: float, size: int) -> None:
        self.step = step
        self.size = size
        self.deltas: deque[dict[str, Any]] = deque(maxlen=size)
        self.base: Snapshot | None = None

    @property
    def points(self) -> list[dict[str, Any]]:
        return [render(d) for d in self.deltas]

    def offer(self, snap: Snapshot) -> dict[str, Any] | None:
        """Take a sample; returns the delta of the step it closed, if any."""
        if self.base is None:
            self.base = snap
            return None
        if snap.at // self.step <= self.base.at // self.step:
            return None
        d = delta(self.base, snap, self.step)
        self.deltas.append(d)
        self.base = snap
        return d


class SharedSeries:
    """With REDIS_URL: every instance's closed steps, one hash per step (`<prefix>ui:ts:<span>:<step>`,
    a field per instance), read back summed, so the Overview shows the fleet, history included after a
    restart. Never on a request's path: the sampler writes, console requests read."""

    def __init__(self, url: str, prefix: str, timeout: float, instance: str) -> None:
        from ..access.limits import redis_client

        self.client = redis_client(url, timeout)
        self.prefix = prefix + "ui:ts:"
        self.instance = instance

    def publish(self, span: str, ring: Ring, d: dict[str, Any]) -> None:
        key = f"{self.prefix}{span}:{d['step']}"
        pipe = self.client.pipeline()
        pipe.hset(key, self.instance, json.dumps(d, separators=(",", ":")))
        pipe.expire(key, int(ring.step * (ring.size + 2)))
        pipe.execute()

    def read(self, span: str, ring: Ring, now: float) -> list[dict[str, Any]]:
        last = int(now // ring.step)
        steps = range(last - ring.size + 1, last + 1)
        pipe = self.client.pipeline()
        for step in steps:
            pipe.hgetall(f"{self.prefix}{span}:{step}")
        out = []
        for found in pipe.execute():
            deltas = []
            for raw in (found or {}).values():
                try:
                    deltas.append(json.loads(raw))
                except ValueError:
                    continue
            if deltas:
                out.append(merge(deltas))
        return out


class Sampler:
    """Ticks every `HOUR_STEP` seconds in a daemon thread (a greenlet under gevent)."""

    def __init__(
        self,
        collect: Callable[[], Iterable[Any]],
        clock: Callable[[], float] = time.time,
        shared: SharedSeries | None = None,
    ) -> None:
        self._collect = collect
        self._clock = clock
        self.shared = shared
        self._failed_logged = -1e9
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
            closed = [(name, ring, ring.offer(snap)) for name, ring in (("hour", self.hour), ("day", self.day))]
        if self.shared is not None:
            for name, ring, d in closed:
                if d is not None:
                    self._guarded(lambda n=name, r=ring, x=d: self.shared.publish(n, r, x), None)
        return snap

    def _guarded(self, call: Callable[[], Any], default: Any) -> Any:
        try:
            return call()
        except Exception as exc:  # Redis down: this instance's own rings instead
            now = time.monotonic()
            if now - self._failed_logged >= 60.0:
                self._failed_logged = now
                log.warning(
                    "console: the shared series in Redis failed (%s: %s); showing this instance's",
                    type(exc).__name__,
                    exc,
                )
            return default

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, args=(weakref.ref(self), self._stop), name="cot-proxy-ui-sampler", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    @staticmethod
    def _run(ref: weakref.ref[Sampler], stop: threading.Event) -> None:
        """Ends with its sampler (a discarded app leaves no thread behind)."""
        while not stop.is_set():
            sampler = ref()
            if sampler is None:
                return
            try:
                sampler.tick()
            except Exception:  # a bad scrape must not end the sampler
                log.exception("console sampler: reading the metrics failed")
            del sampler
            stop.wait(HOUR_STEP)

    def series(self, span: str) -> dict[str, Any]:
        """`span` is `hour` or `day`: the closed steps (every instance's with Redis), plus this instance's
        step still open."""
        ring = self.hour if span == "hour" else self.day
        now = read_snapshot(self._collect(), self._clock())
        shared = None
        if self.shared is not None:
            shared = self._guarded(lambda: self.shared.read(span, ring, now.at), None)
        with self._lock:
            deltas = list(ring.deltas) if shared is None else shared
            base = ring.base
        points = [render(d) for d in deltas]
        if base is not None and now.at - base.at >= 1.0:
            points.append({**render(delta(base, now, ring.step)), "partial": True})
        return {
            "span": span,
            "step_seconds": ring.step,
            "scope": "instance" if shared is None else "fleet",
            "points": points,
            "requests_active": int(round(now.requests_active)),
            "streams_active": int(round(now.streams_active)),
            "totals": {
                "requests": int(round(now.requests)),
                "errors": int(round(now.errors)),
                "tokens_in": int(round(now.prompt_tokens)),
                "tokens_out": int(round(now.completion_tokens)),
            },
        }

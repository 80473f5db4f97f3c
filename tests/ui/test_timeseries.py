"""The Overview's arithmetic: bucket quantiles, points between snapshots, the rings' steps."""

from __future__ import annotations

import math

from app.ui.timeseries import HOUR_STEP, Ring, Sampler, Snapshot, point, quantile

INF = math.inf


def test_quantile_interpolates_like_prometheus() -> None:
    buckets = {0.1: 50.0, 0.5: 90.0, 1.0: 100.0, INF: 100.0}
    assert quantile(0.5, buckets) == 0.1
    assert abs(quantile(0.7, buckets) - 0.3) < 1e-9  # halfway through the (0.1, 0.5] bucket
    assert quantile(0.99, buckets) == 0.95
    assert quantile(0.5, {0.1: 0.0, INF: 0.0}) is None
    assert quantile(0.99, {0.1: 1.0, INF: 10.0}) == 0.1  # beyond the last finite bound: that bound


def test_point_between_snapshots() -> None:
    old = Snapshot(
        at=100.0,
        requests=10,
        errors=1,
        prompt_tokens=100,
        completion_tokens=50,
        duration={0.1: 5, 1.0: 10, INF: 10},
        ttfb={0.1: 2, INF: 2},
    )
    new = Snapshot(
        at=110.0,
        requests=30,
        errors=3,
        prompt_tokens=400,
        completion_tokens=250,
        duration={0.1: 15, 1.0: 30, INF: 30},
        ttfb={0.1: 12, INF: 12},
    )
    p = point(old, new)
    assert p["rps"] == 2.0 and p["requests"] == 20 and p["error_rate"] == 0.1
    assert p["tokens_in"] == 300 and p["tokens_out"] == 200
    assert p["p50_ms"] == 100.0 and p["ttfc_p50_ms"] == 50.0
    reset = point(new, Snapshot(at=120.0, requests=2))  # a restart: counters went back, nothing negative
    assert reset["requests"] == 0 and reset["rps"] == 0.0 and reset["p50_ms"] is None


def test_rings_close_a_point_per_step() -> None:
    ring = Ring(HOUR_STEP, 3)
    for i in range(6):
        ring.offer(Snapshot(at=i * HOUR_STEP, requests=i * 10))
    assert [p["requests"] for p in ring.points] == [10, 10, 10]  # the oldest fell out
    assert ring.points[-1]["t"] == 5 * HOUR_STEP


def test_sampler_reads_the_registry() -> None:
    from prometheus_client import CollectorRegistry, Counter, Histogram

    from app.observability import exposition as names

    registry = CollectorRegistry()
    requests = Counter(names.REQUESTS, "r", ["route"], registry=registry)
    duration = Histogram(names.DURATION, "d", ["route"], buckets=(0.1, 1.0), registry=registry)
    clock = iter(float(t) for t in range(0, 10_000, 10))
    sampler = Sampler(registry.collect, clock=lambda: next(clock))
    sampler.tick()
    for _ in range(4):
        requests.labels("chat").inc()
        duration.labels("chat").observe(0.05)
    sampler.tick()
    series = sampler.series("hour")
    assert series["points"][0]["requests"] == 4 and series["points"][0]["rps"] == 0.4
    assert series["totals"]["requests"] == 4
    assert sampler.series("day")["points"] == [] or sampler.series("day")["points"][0]["partial"]


def _instance(prefix: str, name: str, requests_per_step: int, clock: list[float]):
    from prometheus_client import CollectorRegistry, Counter

    from app.observability import exposition as names
    from app.ui.timeseries import SharedSeries
    from tests.support import TEST_REDIS_URL

    registry = CollectorRegistry()
    counter = Counter(names.REQUESTS, "r", ["route"], registry=registry)
    shared = SharedSeries(TEST_REDIS_URL, prefix, 2.0, instance=name)
    return Sampler(registry.collect, clock=lambda: clock[0], shared=shared), counter, requests_per_step


def test_redis_adds_up_every_instance_and_not_workers_twice() -> None:
    import uuid

    from tests.support import redis_or_skip

    client = redis_or_skip()
    prefix = f"cot-proxy-test:{uuid.uuid4().hex[:12]}:"
    clock = [1_000_000.0]
    try:
        a = _instance(prefix, "host-a:1", 4, clock)
        a2 = _instance(prefix, "host-a:1", 4, clock)  # a second worker of instance a: same sums, same field
        b = _instance(prefix, "host-b:1", 6, clock)
        for _ in range(3):
            for sampler, counter, n in (a, a2, b):
                counter.labels("chat").inc(n)
                sampler.tick()
            clock[0] += HOUR_STEP
        series = a[0].series("hour")
        assert series["scope"] == "fleet"
        closed = [p for p in series["points"] if not p.get("partial")]
        assert [p["requests"] for p in closed] == [10, 10]  # 4 + 6 per step; the first tick is the base
        assert b[0].series("hour")["points"][:2] == closed[:2]  # any instance reads the same
    finally:
        for key in client.scan_iter(match=prefix + "*"):
            client.delete(key)
        client.close()


def test_redis_down_falls_back_to_this_instance() -> None:
    from prometheus_client import CollectorRegistry

    from app.ui.timeseries import SharedSeries

    clock = [2_000_000.0]
    sampler = Sampler(
        CollectorRegistry().collect,
        clock=lambda: clock[0],
        shared=SharedSeries("redis://127.0.0.1:1/0", "p:", 0.2, "x"),
    )
    sampler.tick()
    clock[0] += HOUR_STEP
    sampler.tick()
    series = sampler.series("hour")
    assert series["scope"] == "instance" and len(series["points"]) == 1

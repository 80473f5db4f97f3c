"""The fleet on one machine, all real: 3 proxy replicas (Gunicorn, 2 gevent workers each) behind nginx
(deploy/compose/nginx.conf), sharing the machine's Redis (limits, ejections) and PostgreSQL (keys, usage);
one provider of two fake backends. Each test leaves the fleet whole (every replica up) for the next:

- 300 concurrent streams while the replicas are restarted one after another, two with SIGTERM (every
  stream whole to [DONE]) and the third with SIGKILL (its clients see a clean error, a cut stream or a
  502, and the retry through nginx with the same X-Request-ID comes back whole); no request lost;
- per-key rpm and tpm limits exact across the fleet; a budget never overshot with max_tokens, and without
  it by no more than the in-flight requests' output; metrics summed over the replicas = requests sent;
- a key revoked in PostgreSQL refused by every replica within 1 s;
- a backend one replica ejects avoided by the others (through Redis), before they fail on it themselves;
- every admitted request in the usage table exactly once (by the X-Request-ID the client sent).

Each test prints its figures (`-s`)."""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import requests

from app.access.keys import now_utc, utc
from tests.fakes.openai_upstream import Recorded, Reply, json_reply
from tests.fleet.conftest import EVENT_GAP, FAILURE_THRESHOLD, FleetUnderTest
from tests.fleet.streams import WORDS, Clients, slow_streams, wait_until

STREAMS = 300
STREAM_GAP = 1.0
"""Seconds between the events of a stream in the rolling restart (10 words: ~11 s a stream)."""
KILL_STREAMS = 150
REQUESTS_METRIC = "cot_proxy_requests_total"
MSG = [{"role": "user", "content": "hi"}]


def chat(url: str, key: str, request_id: str | None = None, **extra: Any) -> requests.Response:
    headers = {"Authorization": f"Bearer {key}", "Connection": "close"}
    if request_id:
        headers["X-Request-ID"] = request_id
    return requests.post(
        url + "/v1/chat/completions", headers=headers, timeout=20, json={"model": "m", "messages": MSG, **extra}
    )


def burst(url: str, key: str, n: int, parallel: int = 6, **extra: Any) -> list[tuple[str, int, str]]:
    """`n` requests at once (`parallel` in flight): (request id, status, error code) each."""

    def one(i: int) -> tuple[str, int, str]:
        rid = f"fleet-burst-{i}-{uuid.uuid4().hex[:12]}"
        r = chat(url, key, rid, **extra)
        code = r.json().get("error", {}).get("code") if r.status_code != 200 else ""
        return rid, r.status_code, code or ""

    with ThreadPoolExecutor(parallel) as pool:
        return list(pool.map(one, range(n)))


def usage_counts(t: FleetUnderTest, request_ids: Iterable[str], seconds: float = 20.0) -> dict[str, int]:
    """request id -> rows in cot_usage, once every id in `request_ids` has one (bounded wait: the replicas
    flush every 0.2 s)."""
    wanted = set(request_ids)

    def rows() -> dict[str, int]:
        with t.store.engine.connect() as conn:
            got = conn.exec_driver_sql("SELECT request_id, count(*) FROM cot_usage GROUP BY request_id").all()
        return {rid: n for rid, n in got if rid in wanted}

    try:
        wait_until(lambda: len(rows()) >= len(wanted), seconds, "usage rows for every request", step=0.2)
    except AssertionError:
        pass  # the assertion on the counts says what is missing
    return rows()


def assert_once(counts: dict[str, int], request_ids: set[str]) -> None:
    missing = request_ids - set(counts)
    assert not missing, (len(missing), sorted(missing)[:5])
    twice = {rid: n for rid, n in counts.items() if n != 1}
    assert not twice, list(twice.items())[:5]


def first_rows(t: FleetUnderTest, request_ids: set[str]) -> list[datetime]:
    """The earliest usage row's time of each request in `request_ids`."""
    if not request_ids:
        return []
    with t.store.engine.connect() as conn:
        got = conn.exec_driver_sql("SELECT request_id, min(created_at) FROM cot_usage GROUP BY request_id").all()
    return [utc(at) for rid, at in got if rid in request_ids]


def assert_clean_logs(t: FleetUnderTest) -> None:
    for log in t.fleet.logs:
        assert "Traceback" not in log and "graceful timeout" not in log.lower(), log[-3000:]


def key_spent(t: FleetUnderTest, key_id: int) -> int:
    record = t.store.lookup_by_id(key_id)
    assert record is not None
    return record.spent_tokens


def test_300_streams_through_a_rolling_restart_and_a_sigkill_lose_nothing(fleet: FleetUnderTest):
    """Replicas 1 and 2 get SIGTERM (drain), replica 3 SIGKILL, one after another, each successor serving
    before the next one goes; 300 clients stream all along, retrying (same X-Request-ID) when one fails."""
    t = fleet
    key, _ = t.store.create("fleet-streams")
    for b in t.backends:  # long, sparse streams: 300 open at once without starving the replicas' start-up
        slow_streams(b, delay=STREAM_GAP)
    opened = sum(len(b.requests) for b in t.backends)
    clients = Clients(t.fleet.url, key, STREAMS, retries=3)
    draining = []
    try:
        wait_until(
            lambda: sum(len(b.requests) for b in t.backends) - opened >= STREAMS,
            60,
            f"{STREAMS} streams open through nginx",
        )
        for i in range(len(t.fleet.replicas) - 1):
            before = clients.done()
            draining.append(t.fleet.restart(i))
            wait_until(lambda b=before: clients.done() > b, 60, "streams ending after the restart")
        exits = [t.fleet.retire(old) for old in draining]
        killed_at = time.monotonic()
        killed = t.fleet.kill(len(t.fleet.replicas) - 1)  # its successor starts meanwhile
        # Taken once the processes are dead: a record the replica made between a clock read before the
        # kill and the signal itself is still a first attempt finished before the kill.
        dead_at, dead_wall = time.monotonic(), now_utc()
        before = clients.done()
        wait_until(lambda: clients.done() >= before + STREAMS // 3, 60, "streams ending after the kill")
    finally:
        reqs = clients.stop()
        t.fleet.whole()
        for b in t.backends:
            slow_streams(b, delay=EVENT_GAP)
    # Nothing lost: every request came back whole, at the latest on a retry through nginx.
    lost = [(r.request_id, r.attempts) for r in reqs if not r.whole]
    assert not lost, (len(lost), lost[:5], t.fleet.nginx.errors()[:5])
    # Only the SIGKILL cost a retry: each failed attempt was in flight when the replica died, and the
    # client saw a clean error (a cut stream or a 502), never a stream that looked whole.
    failed = [(r, a, span) for r in reqs for a, span in zip(r.attempts, r.spans, strict=True) if a != "whole"]
    assert failed, "the SIGKILL cut no stream"
    assert all(began <= dead_at and ended >= killed_at for _, _, (began, ended) in failed), [
        (a, round(b - killed_at, 2), round(e - killed_at, 2)) for _, a, (b, e) in failed
    ][:10]
    errors = Counter(a for _, a, _ in failed)
    assert set(errors) <= {"ChunkedEncodingError", "ConnectionError", "http 502"} | {
        f"cut after {n} events" for n in range(len(WORDS) + 4)
    }, errors
    assert exits == [0] * len(draining)
    assert_clean_logs(t)
    ids = {r.request_id for r in reqs}
    retried = {r.request_id for r, _, _ in failed}
    counts = usage_counts(t, ids)
    recovered = sum(
        int(m.group(1))
        for r in t.fleet.replicas
        for line in r.lines()
        if (m := re.match(r"usage: wrote (\d+) record", str(line.get("message", ""))))
    )
    # Each request once, but for a retried one whose first attempt the killed replica had finished (usage
    # spooled) when the kill cut its last chunk: both attempts were generated, both are recorded.
    twice = {rid for rid, n in counts.items() if n == 2 and rid in retried}
    assert_once({rid: 1 if rid in twice else n for rid, n in counts.items()}, ids)
    assert all(at <= dead_wall for at in first_rows(t, twice)), "a second row not from before the kill"
    print(
        f"\nfleet: {STREAMS} concurrent clients, {len(reqs)} streams started, {sum(r.whole for r in reqs)} "
        f"whole with [DONE]; {len(draining)} rolling restarts (SIGTERM, exit 0), {t.fleet.nginx.refusals()} "
        f"connects refused and retried by nginx; 1 SIGKILL ({killed} processes): {len(retried)} clients saw "
        f"{dict(errors)}, {len(failed)} retries through nginx, all whole; {sum(counts.values())} usage rows: "
        f"each once ({recovered} written by the successor from the killed workers' spools), {len(twice)} "
        f"retried twice (first attempt finished at the proxy before the kill)"
    )


def test_limits_and_budgets_are_exact_across_the_fleet_and_metrics_add_up(fleet: FleetUnderTest):
    t = fleet
    url = t.fleet.url
    counted_before = t.fleet.metric_total(REQUESTS_METRIC)
    rpm_key, _ = t.store.create("fleet-rpm", rpm=20)
    tpm_key, _ = t.store.create("fleet-tpm", tpm=80)  # 8 tokens a request (estimate = use): 10 fit
    budget_key, budget_rec = t.store.create("fleet-budget", budget=100)
    stream_budget_key, stream_budget_rec = t.store.create("fleet-budget-streams", budget=50)

    rpm = burst(url, rpm_key, 30)
    tpm = burst(url, tpm_key, 25)
    # max_tokens 12: each holds 8 + 12 = 20 while it runs and spends 8; exactly 11 fit in 100 (88 + 20 > 100).
    budget = burst(url, budget_key, 30, max_tokens=12)
    for i in range(12):  # then one at a time, until refused: nothing held, only what was spent counts
        rid = f"fleet-budget-tail-{i}-{uuid.uuid4().hex[:8]}"
        r = chat(url, budget_key, rid, max_tokens=12)
        budget.append((rid, r.status_code, "" if r.status_code == 200 else r.json()["error"]["code"]))
        if r.status_code != 200:
            break
    # Streams without max_tokens hold only their prompt (8) and spend 13: 6 fit in 50 (48), all in flight
    # together (a stream lasts ~3 s); once one ends its 13 leave less than 8: none more.
    streams = burst(url, stream_budget_key, 20, parallel=20, stream=True, stream_options={"include_usage": True})

    def statuses(results: list[tuple[str, int, str]]) -> Counter:
        return Counter((code, err) for _, code, err in results)

    assert statuses(rpm) == {(200, ""): 20, (429, "rate_limit_exceeded"): 10}, statuses(rpm)
    assert statuses(tpm) == {(200, ""): 10, (429, "rate_limit_exceeded"): 15}, statuses(tpm)
    assert statuses(budget) == {(200, ""): 11, (429, "insufficient_quota"): len(budget) - 11}, statuses(budget)
    assert statuses(streams) == {(200, ""): 6, (429, "insufficient_quota"): 14}, statuses(streams)
    admitted = {rid for rid, code, _ in rpm + tpm + budget + streams if code == 200}
    assert_once(usage_counts(t, admitted), admitted)
    spent = key_spent(t, budget_rec.id)
    assert spent == 11 * 8 <= 100
    stream_spent = key_spent(t, stream_budget_rec.id)
    in_flight_output = 6 * len(WORDS)  # what the admitted streams generated beyond the prompt they held
    assert stream_spent == 6 * (3 + len(WORDS)) and stream_spent - 50 <= in_flight_output

    sent = len(rpm) + len(tpm) + len(budget) + len(streams)
    total = sent + counted_before
    try:  # a request is counted in its done hook, just after its last byte: bounded wait
        wait_until(lambda: t.fleet.metric_total(REQUESTS_METRIC) >= total, 10, "metrics of every request", step=0.2)
    except AssertionError:
        pass
    counted = t.fleet.metric_total(REQUESTS_METRIC) - counted_before
    assert counted == sent
    refused = sum(code == 429 for _, code, _ in rpm + tpm + budget + streams)
    rpm_seen = statuses(rpm)
    print(
        f"\nfleet limits: rpm 20: 30 -> {rpm_seen[(200, '')]} x 200 + {rpm_seen[(429, 'rate_limit_exceeded')]}"
        f" x 429; tpm 80: 25 -> 10 + 15; budget 100 (max_tokens 12): {len(budget)} -> 11 admitted, spent {spent}"
        f" (overshoot 0); budget 50 (streams, no max_tokens): 20 -> 6, spent {stream_spent} (overshoot "
        f"{stream_spent - 50} <= in-flight output {in_flight_output}); 429s expected {refused} seen {refused}; "
        f"{REQUESTS_METRIC} summed over 3 replicas +{counted:g} for {sent} sent; {len(admitted)} usage rows"
    )


def test_a_revoked_key_is_refused_by_every_replica_within_a_second(fleet: FleetUnderTest):
    t = fleet
    key, rec = t.store.create("fleet-revoked")
    seen: list[tuple[int, float, int]] = []  # replica, sent at, status
    lock = threading.Lock()
    revoked_at: list[float] = []
    stop = threading.Event()

    def hammer(replica: int, url: str) -> None:
        for _ in range(2000):
            if stop.is_set():
                return
            sent = time.monotonic()
            status = chat(url, key).status_code
            with lock:
                seen.append((replica, sent, status))

    threads = [
        threading.Thread(target=hammer, args=(i, u), daemon=True)
        for i, u in enumerate(t.fleet.urls())
        for _ in range(2)
    ]
    for th in threads:
        th.start()
    try:
        wait_until(
            lambda: all(sum(1 for r, _, s in list(seen) if r == i and s == 200) >= 4 for i in range(3)),
            30,
            "every replica serving the key",
        )
        t.store.revoke(str(rec.id))
        revoked_at.append(time.monotonic())
        wait_until(
            lambda: all(
                sum(1 for r, at, _ in list(seen) if r == i and at > revoked_at[0] + 1.0) >= 6 for i in range(3)
            ),
            30,
            "requests to every replica a second after the revocation",
        )
    finally:
        stop.set()
        for th in threads:
            th.join(30)
    t0 = revoked_at[0]
    assert {s for _, _, s in seen} <= {200, 401}
    late = [(r, round(at - t0, 3)) for r, at, s in seen if s == 200 and at > t0 + 1.0]
    assert not late, late[:5]
    latency = max([at - t0 for _, at, s in seen if s == 200] + [0.0])
    after = Counter(r for r, at, _ in seen if at > t0 + 1.0)
    print(
        f"\nfleet revocation: last request answered 200 was sent {latency * 1000:.0f} ms after the revocation; "
        f"every request sent 1 s after it refused 401 ({dict(after)} per replica)"
    )


def test_a_backend_ejected_by_one_replica_is_avoided_by_all(fleet: FleetUnderTest):
    t = fleet
    key, _ = t.store.create("fleet-eject")
    bad = t.backends[1]
    hits: list[float] = []

    def failing(rec: Recorded) -> Reply | None:
        if rec.path.split("?")[0].endswith("/chat/completions"):
            hits.append(time.monotonic())
            return json_reply({"error": {"message": "broken", "type": "server_error"}}, status=500)
        return None

    bad.responder = failing
    try:
        first, others = t.fleet.urls()[0], t.fleet.urls()[1:]

        def until(condition: Callable[[], bool], urls: list[str], most: int, tag: str) -> list[int]:
            statuses: list[int] = []

            def loop(u: str) -> None:
                for i in range(most):
                    if condition():
                        return
                    statuses.append(chat(u, key, f"{tag}-{i}-{uuid.uuid4().hex[:8]}").status_code)

            with ThreadPoolExecutor(len(urls) * 2) as pool:
                list(pool.map(loop, urls * 2))
            return statuses

        # Replica 1 alone: its workers fail over to the good backend until one ejects the bad one.
        statuses = until(lambda: t.ejected(bad), [first], 300, "eject-first")
        assert t.ejected(bad), "replica 1 never ejected the failing backend"
        t0 = time.monotonic()
        by_first = len(hits)
        # The others: they learn it from Redis (every 0.25 s), well before FAILURE_THRESHOLD failures.
        last_hit = [t0]
        clean = [0]

        def quiet() -> bool:
            if len(hits) > by_first and hits[-1] > last_hit[0]:
                last_hit[0], clean[0] = hits[-1], 0
            clean[0] += 1
            return clean[0] > 60  # 60 requests in a row that never reached the bad backend

        statuses += until(quiet, others, 150, "eject-others")
        after = len(hits) - by_first
        propagation = last_hit[0] - t0
        assert set(statuses) == {200}, Counter(statuses)
        assert clean[0] > 60, "the other replicas kept sending to the ejected backend"
        # A request whose first attempt failed (on the bad backend) went on to the good one: 2 attempts. Per
        # worker of replicas 2 and 3, fewer than FAILURE_THRESHOLD: none of them ejected it by itself.
        failed_first = Counter(
            (line["pid"])
            for r in t.fleet.replicas[1:]
            for line in r.lines()
            if str(line.get("request_id", "")).startswith("eject-others") and line.get("attempts")
        )
        assert sum(failed_first.values()) == after, (failed_first, after)
        assert max(failed_first.values(), default=0) < FAILURE_THRESHOLD, failed_first
        assert propagation < 3.0, propagation
        final = len(hits)
        assert all(r.status_code == 200 for r in (chat(t.fleet.url, key) for _ in range(20)))
        assert len(hits) == final
    finally:
        slow_streams(bad, delay=EVENT_GAP)
    print(
        f"\nfleet ejection: replica 1 ejected the failing backend after {by_first} failed attempts (every request "
        f"200 through the other backend); replicas 2 and 3 sent it {after} request(s) in the "
        f"{propagation * 1000:.0f} ms after (at most {max(failed_first.values(), default=0)} per worker, threshold "
        f"{FAILURE_THRESHOLD}), then none"
    )

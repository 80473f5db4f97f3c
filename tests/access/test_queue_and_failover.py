"""MAX_CONCURRENT_REQUESTS's bounded queue (503 under a burst), and Redis going away (fail-open / fail-closed)."""

from __future__ import annotations

import queue
import threading
import time

import jwt
import pytest
import requests

from tests.fakes.openai_upstream import Reply
from tests.support import LiveServer, guard_of

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
SECRET = "jwt-secret-for-failover-tests-012345"
SLOW_BODY = [b'{"id":"x","object":"chat.completion","choices":[],', b'"usage":{"total_tokens":1}}']


def gated(upstream, gate: threading.Event) -> None:
    """Every upstream answer waits for `gate` (bounded by the fake's own limit)."""
    upstream.responder = lambda rec: Reply(headers={"Content-Type": "application/json"}, parts=SLOW_BODY, gate=gate)


def fire(url: str, n: int, results: queue.Queue) -> list[threading.Thread]:
    def one() -> None:
        try:
            r = requests.post(url + "/v1/chat/completions", json=CHAT, timeout=15)
            results.put((r.status_code, r.headers.get("Retry-After"), r.json()))
        except Exception as exc:  # reported, so the test fails with a reason rather than hanging
            results.put((0, None, repr(exc)))

    threads = [threading.Thread(target=one, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    return threads


def test_burst_gets_503_beyond_slots_and_queue(make_app, upstream):
    app = make_app(max_concurrent_requests=2, max_queued_requests=2, queue_timeout=10.0)
    q = guard_of(app).queue
    server = LiveServer(app)
    gate = threading.Event()
    gated(upstream, gate)
    results: queue.Queue = queue.Queue()
    threads = fire(server.url, 8, results)
    try:
        refused = [results.get(timeout=10) for _ in range(4)]  # the 4 with neither a slot nor a queue place
        assert q.wait_until(lambda s: s.in_use == 2 and s.waiting == 2, timeout=10)
        for status, retry_after, body in refused:
            assert status == 503, body
            assert body["error"]["code"] == "overloaded" and retry_after == "10"
        assert results.empty()
    finally:
        gate.set()
    served = [results.get(timeout=10) for _ in range(4)]  # 2 in flight + 2 that waited for their slot
    assert [s for s, _, _ in served] == [200] * 4
    for t in threads:
        t.join(5)
    assert q.wait_until(lambda s: s.in_use == 0 and s.waiting == 0, timeout=5)
    assert len(upstream.requests) == 4
    server.stop()


def test_queued_request_times_out_with_503(make_app, upstream):
    app = make_app(max_concurrent_requests=1, max_queued_requests=5, queue_timeout=0.3)
    q = guard_of(app).queue
    server = LiveServer(app)
    gate = threading.Event()
    gated(upstream, gate)
    results: queue.Queue = queue.Queue()
    try:
        fire(server.url, 1, results)
        assert q.wait_until(lambda s: s.in_use == 1, timeout=10)
        fire(server.url, 1, results)
        status, retry_after, body = results.get(timeout=10)
        assert status == 503 and "within 0.3 s" in body["error"]["message"] and retry_after == "1"
    finally:
        gate.set()
    assert results.get(timeout=10)[0] == 200
    server.stop()


@pytest.mark.parametrize("fail_closed", [False, True])
def test_redis_stopped_mid_run(make_app, own_redis, fail_closed):
    app = make_app(jwt_secret=SECRET, jwt_algorithms=("HS256",), redis_url=own_redis.url, fail_closed=fail_closed)
    c = app.test_client()
    auth = {"Authorization": "Bearer " + jwt.encode({"sub": "team", "rpm": 3}, SECRET, algorithm="HS256")}

    def post():
        return c.post("/v1/chat/completions", json=CHAT, headers=auth, buffered=True)

    assert post().status_code == 200
    own_redis.stop()
    during = post()
    if fail_closed:
        assert during.status_code == 503
        assert during.get_json()["error"]["code"] == "rate_limiter_unavailable"
        assert during.headers["Retry-After"] == "1"
    else:
        assert during.status_code == 200  # served without limits...
        assert guard_of(app).fail_open_total == 1  # ...and counted
    own_redis.start()  # back on the same port: limits hold again, counting afresh...
    circuit = guard_of(app).limiter.circuit  # ...once the 1 s back-off after the failure is over
    assert not circuit.allow()
    circuit.clock = lambda: time.monotonic() + 1.01
    assert [post().status_code for _ in range(4)] == [200, 200, 200, 429]

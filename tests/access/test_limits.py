"""Per-key limits: requests and tokens per minute, concurrency, in memory and in a real Redis."""

from __future__ import annotations

import threading
import time

import jwt
import pytest

from app.access.limits import Limits, MemoryLimiter, RedisLimiter, Ticket, reset_duration
from tests.fakes.openai_upstream import Reply, chat_completion, json_reply
from tests.support import TEST_REDIS_URL, LiveServer, guard_of

SECRET = "jwt-secret-for-limit-tests-0123456789"
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}  # estimated at 8 prompt tokens


def token(sub: str, **claims: object) -> dict[str, str]:
    return {"Authorization": "Bearer " + jwt.encode({"sub": sub, **claims}, SECRET, algorithm="HS256")}


@pytest.fixture(params=["memory", "redis"])
def shared(request) -> dict[str, object]:
    """Access settings for the limiter under test: in memory, or in the test Redis."""
    if request.param == "memory":
        return {}
    return request.getfixturevalue("redis_settings")


@pytest.fixture
def limited(make_app, shared):
    def build(**extra: object):
        return make_app(jwt_secret=SECRET, jwt_algorithms=("HS256",), **shared, **extra)

    return build


def post(client, headers, body=CHAT):
    return client.post("/v1/chat/completions", json=body, headers=headers, buffered=True)


# -- unit: the sliding window, with a clock we move ----------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_memory_window_slides():
    clock = Clock()
    lim = MemoryLimiter(clock)
    limits = Limits(rpm=3)
    times = []
    for _ in range(3):
        times.append(clock.now)
        assert lim.admit(Ticket("s", limits, 0)).allowed
        clock.now += 10
    refused = lim.admit(Ticket("s", limits, 0))
    assert not refused.allowed and refused.reason == "requests"
    assert refused.retry_after_ms == 30_000  # the first leaves the window 60 s after it came
    clock.now = times[0] + 60.0
    assert lim.admit(Ticket("s", limits, 0)).allowed
    assert not lim.admit(Ticket("s", limits, 0)).allowed
    assert lim.admit(Ticket("other", limits, 0)).allowed  # subjects are separate


def test_memory_tokens_corrected_by_real_usage():
    clock = Clock()
    lim = MemoryLimiter(clock)
    limits = Limits(tpm=100)
    first = Ticket("s", limits, 40)
    d = lim.admit(first)
    assert d.allowed and d.remaining_tokens == 60
    lim.release(first, 90)  # the answer cost more than the estimate
    clock.now += 5
    refused = lim.admit(Ticket("s", limits, 20))
    assert not refused.allowed and refused.reason == "tokens" and refused.retry_after_ms == 55_000
    assert lim.admit(Ticket("s", limits, 10)).allowed
    assert lim.admit(Ticket("s", limits, 101)).reason == "too_large"


@pytest.mark.parametrize(
    "ms, text", [(0, "0ms"), (20, "20ms"), (1500, "1.5s"), (59_988, "59.988s"), (360_000, "6m0s"), (61_500, "1m1.5s")]
)
def test_reset_format(ms, text):
    assert reset_duration(ms) == text


def test_redis_limiter_script(redis_prefix):
    lim = RedisLimiter(TEST_REDIS_URL, redis_prefix)
    limits = Limits(rpm=2, tpm=50, concurrency=1)
    a = Ticket("s", limits, 20)
    d = lim.admit(a)
    assert d.allowed and d.remaining_requests == 1 and d.remaining_tokens == 30
    busy = lim.admit(Ticket("s", limits, 1))
    assert not busy.allowed and busy.reason == "concurrency"
    lim.release(a, 45)
    d = lim.admit(Ticket("s", limits, 10))
    assert not d.allowed and d.reason == "tokens" and 59_000 <= d.retry_after_ms <= 60_000
    b = Ticket("s", limits, 5)
    assert lim.admit(b).allowed
    lim.release(b, 5)
    d = lim.admit(Ticket("s", limits, 0))
    assert not d.allowed and d.reason == "requests" and 59_000 <= d.retry_after_ms <= 60_000
    lim.client.close()


# -- over HTTP ---------------------------------------------------------------------------


def test_requests_per_minute_exact_with_headers(limited):
    c = limited().test_client()
    auth = token("team-a", rpm=5)
    started = time.monotonic()
    for i in range(5):
        r = post(c, auth)
        assert r.status_code == 200
        assert r.headers["x-ratelimit-limit-requests"] == "5"
        assert r.headers["x-ratelimit-remaining-requests"] == str(4 - i)
        assert r.headers["x-ratelimit-reset-requests"].endswith("s")
    refused = post(c, auth)
    assert refused.status_code == 429
    err = refused.get_json()["error"]
    assert err["code"] == "rate_limit_exceeded" and err["type"] == "requests"
    retry = int(refused.headers["Retry-After"])
    assert 60 - (time.monotonic() - started) - 1 <= retry <= 60
    assert 0 < int(refused.headers["retry-after-ms"]) <= 60_000
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert post(c, token("team-b", rpm=5)).status_code == 200  # another caller is not affected


def test_tokens_per_minute_uses_real_usage(limited, upstream):
    c = limited().test_client()
    auth = token("team-t", tpm=20)
    big = chat_completion("long answer")
    big["usage"] = {"prompt_tokens": 5, "completion_tokens": 10, "total_tokens": 15}
    upstream.enqueue(json_reply(big))
    first = post(c, auth)
    assert first.status_code == 200 and first.headers["x-ratelimit-limit-tokens"] == "20"
    assert first.headers["x-ratelimit-remaining-tokens"] == "12"  # 20 - the 8-token estimate
    # the estimate (8) was replaced by the real 15: 15 + 8 > 20
    refused = post(c, auth)
    assert refused.status_code == 429 and refused.get_json()["error"]["type"] == "tokens"
    assert 55 <= int(refused.headers["Retry-After"]) <= 60
    huge = {"model": "m", "messages": [{"role": "user", "content": "x" * 400}]}
    too_large = post(c, token("team-u", tpm=20), huge)
    assert too_large.status_code == 429 and too_large.headers["x-should-retry"] == "false"


def test_concurrency_per_key(limited, upstream):
    app = limited(max_concurrent_requests=50)  # its slot count tells when a request is fully released
    server = LiveServer(app)
    gate = threading.Event()
    upstream.enqueue(
        Reply(
            headers={"Content-Type": "application/json"},
            parts=[b'{"id":"x","object":"chat.completion",', b'"choices":[]}'],
            gate=gate,
        )
    )
    auth = token("team-c", max_concurrent=1)
    import requests

    results: list[int] = []
    t = threading.Thread(
        target=lambda: results.append(
            requests.post(server.url + "/v1/chat/completions", json=CHAT, headers=auth, timeout=10).status_code
        )
    )
    t.start()
    try:
        assert upstream.arrived.wait(5)
        busy = requests.post(server.url + "/v1/chat/completions", json=CHAT, headers=auth, timeout=10)
        assert busy.status_code == 429 and busy.headers["Retry-After"] == "1"
        assert "concurrent" in busy.json()["error"]["message"]
    finally:
        gate.set()
        t.join(10)
    assert results == [200]
    assert guard_of(app).queue.wait_until(lambda q: q.in_use == 0, timeout=5)
    assert requests.post(server.url + "/v1/chat/completions", json=CHAT, headers=auth, timeout=10).status_code == 200
    server.stop()


def test_two_proxies_share_redis(make_app, redis_settings):
    """Two app instances (as two replicas) on one Redis: one window between them."""
    clients = [make_app(jwt_secret=SECRET, jwt_algorithms=("HS256",), **redis_settings).test_client() for _ in range(2)]
    auth = token("shared", rpm=4)
    assert [post(clients[i % 2], auth).status_code for i in range(4)] == [200] * 4
    assert post(clients[0], auth).status_code == 429
    assert post(clients[1], auth).status_code == 429


def test_memory_limits_are_per_worker(make_app):
    """Documented: without REDIS_URL each worker counts alone."""
    clients = [make_app(jwt_secret=SECRET, jwt_algorithms=("HS256",)).test_client() for _ in range(2)]
    auth = token("alone", rpm=1)
    assert [post(c, auth).status_code for c in clients] == [200, 200]
    assert post(clients[0], auth).status_code == 429

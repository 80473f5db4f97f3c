"""A Redis that accepts connections and never answers: one short timeout, then Redis is skipped.

`StuckRedis` is a real TCP server on 127.0.0.1 that either holds every connection without a byte of
answer ("hang") or forwards it to the test Redis ("forward"), so a test can make Redis hang and come
back on the same address. The circuit (app/access/limits.py) skips Redis for a back-off after a
failure (1 s, doubling to 30 s); the tests move its clock instead of waiting.
"""

from __future__ import annotations

import select
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import jwt
import pytest

from app.access.limits import Circuit, LimiterUnavailable, Limits, RedisLimiter, Ticket
from app.routing.shared import PREFIX, SharedEjections
from tests.support import TEST_REDIS_URL, guard_of

SECRET = "jwt-secret-for-redis-fault-tests-0123"
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
TIMEOUT = 0.25  # REDIS_TIMEOUT_SECONDS's default
MAX_LIFE = 30.0  # no connection of the fake outlives this


class StuckRedis:
    """Accepts TCP on 127.0.0.1; `mode` "hang" (read, never answer) or "forward" (to the test Redis)."""

    def __init__(self) -> None:
        target = urlsplit(TEST_REDIS_URL)
        self.target = (target.hostname or "127.0.0.1", target.port or 6379)
        self.db = (target.path or "/0").lstrip("/") or "0"
        self.mode = "hang"
        self.accepted = 0
        self._stop = threading.Event()
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(128)
        self._sock.settimeout(0.05)
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self._sock.getsockname()[1]}/{self.db}"

    def _accept(self) -> None:
        started = time.monotonic()
        while not self._stop.is_set() and time.monotonic() - started < MAX_LIFE:
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            t = threading.Thread(target=self._serve, args=(conn, self.mode), daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket, mode: str) -> None:
        peer = socket.create_connection(self.target, timeout=2) if mode == "forward" else None
        socks = [conn] + ([peer] if peer else [])
        started = time.monotonic()
        try:
            while not self._stop.is_set() and time.monotonic() - started < MAX_LIFE:
                ready, _, _ = select.select(socks, [], [], 0.05)
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    if peer is not None:
                        (peer if s is conn else conn).sendall(data)
        except OSError:
            return
        finally:
            for s in socks:
                s.close()

    def stop(self) -> None:
        self._stop.set()
        self._sock.close()
        for t in self._threads:
            t.join(2)


@pytest.fixture
def stuck_redis() -> Iterator[StuckRedis]:
    server = StuckRedis()
    yield server
    server.stop()


class Clock:
    """Monotonic time plus an offset the test moves forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset


def token(sub: str, **claims: object) -> dict[str, str]:
    return {"Authorization": "Bearer " + jwt.encode({"sub": sub, **claims}, SECRET, algorithm="HS256")}


def timed(call, n: int) -> tuple[list, float]:
    started = time.monotonic()
    out = [call() for _ in range(n)]
    return out, time.monotonic() - started


def app_on(make_app, url: str, prefix: str, **extra: object):
    return make_app(jwt_secret=SECRET, jwt_algorithms=("HS256",), redis_url=url, redis_prefix=prefix, **extra)


# -- the limiter behind the guard: fail-open and fail-closed answer at once ----------------------------


def prefix() -> str:
    return f"cot-proxy-test:{uuid.uuid4().hex[:12]}:"  # a hung Redis stores nothing: no clean-up


def test_hanging_redis_fail_open_costs_one_timeout(make_app, stuck_redis):
    auth = token("team-open", rpm=1000)
    # the same requests without Redis: what the relay itself takes here
    plain = make_app(jwt_secret=SECRET, jwt_algorithms=("HS256",)).test_client()
    _, baseline = timed(lambda: plain.post("/v1/chat/completions", json=CHAT, headers=auth, buffered=True), 20)
    c = app_on(make_app, stuck_redis.url, prefix()).test_client()
    first, took = timed(lambda: c.post("/v1/chat/completions", json=CHAT, headers=auth, buffered=True), 1)
    assert first[0].status_code == 200 and "x-ratelimit-limit-requests" not in first[0].headers  # served unlimited
    assert took < 2 * TIMEOUT + 0.3, f"first request took {took:.3f} s"  # one timeout, no retries
    slowest = 0.0
    started = time.monotonic()
    for _ in range(20):
        one = time.monotonic()
        assert c.post("/v1/chat/completions", json=CHAT, headers=auth, buffered=True).status_code == 200
        slowest = max(slowest, time.monotonic() - one)
    took = time.monotonic() - started
    assert slowest < TIMEOUT * 0.8, f"a request took {slowest:.3f} s with Redis skipped"
    assert took < baseline + 0.25, f"20 requests took {took:.3f} s with Redis skipped, {baseline:.3f} s without Redis"
    assert stuck_redis.accepted == 1  # nothing went near it after the first failure


def test_hanging_redis_fail_closed_answers_503_at_once(make_app, stuck_redis):
    c = app_on(make_app, stuck_redis.url, prefix(), fail_closed=True).test_client()
    auth = token("team-closed", rpm=1000)
    first, took_first = timed(lambda: c.post("/v1/chat/completions", json=CHAT, headers=auth, buffered=True), 1)
    assert first[0].status_code == 503 and first[0].get_json()["error"]["code"] == "rate_limiter_unavailable"
    assert took_first < 2 * TIMEOUT + 0.3
    rest, took = timed(lambda: c.post("/v1/chat/completions", json=CHAT, headers=auth, buffered=True), 20)
    assert {r.status_code for r in rest} == {503} and rest[-1].headers["Retry-After"] == "1"
    assert took < 0.5, f"20 refusals took {took:.3f} s"


def test_redis_back_is_used_after_the_back_off(make_app, stuck_redis, redis_prefix):
    app = app_on(make_app, stuck_redis.url, redis_prefix)
    limiter = guard_of(app).limiter
    clock = limiter.circuit.clock = Clock()
    c = app.test_client()
    auth = token("team-back", rpm=100)
    assert (
        "x-ratelimit-limit-requests"
        not in c.post("/v1/chat/completions", json=CHAT, headers=auth, buffered=True).headers
    )  # hung: served unlimited
    stuck_redis.mode = "forward"  # Redis answers again, but the back-off (1 s) is not over
    assert (
        "x-ratelimit-limit-requests"
        not in c.post("/v1/chat/completions", json=CHAT, headers=auth, buffered=True).headers
    )
    clock.offset += 1.01
    r = c.post("/v1/chat/completions", json=CHAT, headers=auth, buffered=True)  # the probe: Redis again
    assert r.headers["x-ratelimit-remaining-requests"] == "99"
    r = c.post("/v1/chat/completions", json=CHAT, headers=auth, buffered=True)
    assert r.headers["x-ratelimit-remaining-requests"] == "98"


def test_back_off_doubles_to_30_s_with_a_single_probe():
    clock = Clock()
    circuit = Circuit("test", clock=clock)
    assert circuit.allow()
    waits = []
    for _ in range(7):
        circuit.failed(OSError("down"))
        assert not circuit.allow()
        waits.append(round(circuit.open_until - clock(), 1))
        clock.offset += waits[-1] + 0.01
        assert circuit.allow()  # the probe
        assert not circuit.allow()  # only one
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    circuit.succeeded()
    assert circuit.allow() and circuit.allow()
    circuit.failed(OSError("down"))
    circuit.failed(OSError("down"))  # a call already in flight when it opened: no doubling
    assert round(circuit.open_until - clock(), 1) == 1.0


def test_release_missed_while_hung_is_applied_when_redis_is_back(stuck_redis, redis_prefix):
    stuck_redis.mode = "forward"
    lim = RedisLimiter(stuck_redis.url, redis_prefix, timeout=TIMEOUT)
    clock = lim.circuit.clock = Clock()
    try:
        limits = Limits(concurrency=1, budget=100)
        subject = "key:" + uuid.uuid4().hex
        a = Ticket(subject, limits, 8, reserve=50)
        assert lim.admit(a).allowed
        stuck_redis.mode = "hang"
        lim.client.connection_pool.disconnect()  # the next call opens a connection: a hung one
        with pytest.raises(LimiterUnavailable):
            lim.release(a, 7)
        stuck_redis.mode = "forward"
        clock.offset += 1.01
        d = lim.admit(Ticket(subject, limits, 8, reserve=93))  # a's slot freed, its 7 spent, 93 left
        assert d.allowed and d.remaining_budget == 0
    finally:
        lim.client.close()


# -- shared ejections (app/routing/shared.py) -------------------------------------------------------


class _Target:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url


class _Backend:
    def __init__(self, base_url: str) -> None:
        self.target = _Target(base_url)
        self.cooldown_seconds = 5.0
        self.down_until = 0.0


def test_shared_ejections_skip_a_hanging_redis(stuck_redis, _redis_client):
    shared = SharedEjections(stuck_redis.url)
    clock = shared.circuit.clock = Clock()
    backend = _Backend(f"http://backend-{uuid.uuid4().hex}.test/v1/")
    try:
        _, took_first = timed(lambda: shared.publish(backend), 1)
        assert took_first < 2 * TIMEOUT + 0.3
        _, took = timed(lambda: (shared.publish(backend), shared.sync([backend])), 20)
        assert took < 0.1, f"20 publish+sync took {took:.3f} s with Redis skipped"
        stuck_redis.mode = "forward"
        clock.offset += 1.01
        shared.publish(backend)  # the probe goes through
        assert 0 < _redis_client.pttl(PREFIX + backend.target.base_url) <= 5000
        other = _Backend(backend.target.base_url)
        shared.sync([other])
        assert other.down_until > time.monotonic()
    finally:
        _redis_client.delete(PREFIX + backend.target.base_url)
        shared.client.close()


# -- REDIS_TIMEOUT_SECONDS ----------------------------------------------------------------------------


def test_redis_timeout_setting(make_app):
    from app.access.settings import AccessSettings
    from app.envparse import ConfigError

    assert AccessSettings.from_env({}).redis_timeout == TIMEOUT
    assert AccessSettings.from_env({"REDIS_TIMEOUT_SECONDS": "0.1"}).redis_timeout == 0.1
    for bad in ("0", "-1", "soon", "11"):
        with pytest.raises(ConfigError, match="REDIS_TIMEOUT_SECONDS"):
            AccessSettings.from_env({"REDIS_TIMEOUT_SECONDS": bad})
    app = app_on(make_app, "redis://127.0.0.1:1/0", prefix(), redis_timeout=0.1)
    kwargs = guard_of(app).limiter.client.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == 0.1 and kwargs["socket_connect_timeout"] == 0.1

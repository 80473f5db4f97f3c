"""Token budgets under concurrency: the estimate is reserved at admission, so a burst cannot overshoot.

The rule (app/access/limits.py): a request is admitted only if its reservation (prompt estimate +
max_tokens x n, at least 1) fits in budget - spent - reserved; when it ends the reservation goes and
its real usage is added to `spent`. So while each request uses no more than it reserved, admitted
requests x usage never exceed the budget.

Every admitted request is held at the fake upstream until each of the 50 is either refused or held,
so all 50 are decided while the admitted ones are still in flight (the worst case for the budget).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import pytest
import requests

from app.access.limits import Limits, MemoryLimiter, RedisLimiter, Ticket
from app.access.store import KeyStore
from app.access.usage import estimate_reserve
from tests.fakes.openai_upstream import chat_completion, json_reply
from tests.support import TEST_REDIS_URL, Gunicorn, LiveServer, guard_of

BUDGET = 40
USAGE = 7  # the fake upstream's chat answer: usage.total_tokens
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}  # estimated at 8 prompt tokens
ESTIMATE = 8
BURST = 50


class Hold:
    """Holds every upstream answer until released; counts what arrived (bounded waits only)."""

    def __init__(self, upstream) -> None:
        self.cond = threading.Condition()
        self.arrived = 0
        self.gate = threading.Event()
        upstream.responder = self._respond

    def _respond(self, rec):
        with self.cond:
            self.arrived += 1
            self.cond.notify_all()
        self.gate.wait(15)
        return json_reply(chat_completion("ok"))

    def notify(self, _future: Future | None = None) -> None:
        with self.cond:
            self.cond.notify_all()


def burst(url: str, secret: str, hold: Hold, body=CHAT, n: int = BURST) -> list[requests.Response]:
    """`n` concurrent requests; the upstream answers once every one is refused or held there."""

    def one() -> requests.Response:
        return requests.post(
            url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {secret}"}, timeout=20
        )

    with ThreadPoolExecutor(max_workers=n) as pool:
        futures = [pool.submit(one) for _ in range(n)]
        for f in futures:
            f.add_done_callback(hold.notify)
        try:
            with hold.cond:
                decided = hold.cond.wait_for(lambda: hold.arrived + sum(f.done() for f in futures) >= n, 15)
            assert decided, f"only {hold.arrived} held and {sum(f.done() for f in futures)} answered"
        finally:
            hold.gate.set()
        return [f.result(timeout=20) for f in futures]


def admitted_and_refused(responses: list[requests.Response]) -> tuple[int, int]:
    ok = sum(r.status_code == 200 for r in responses)
    refused = [r for r in responses if r.status_code != 200]
    for r in refused:
        assert r.status_code == 429, r.text
        err = r.json()["error"]
        assert err["code"] == "insufficient_quota" and r.headers["x-should-retry"] == "false"
    return ok, len(refused)


@pytest.fixture(params=["memory", "redis"])
def shared(request) -> dict[str, object]:
    if request.param == "memory":
        return {}
    return request.getfixturevalue("redis_settings")


def test_burst_never_overshoots_the_budget(database_url, make_app, store_at, shared, upstream):
    app = make_app(
        virtual_keys=True, database_url=database_url, usage_accounting=True, usage_flush_seconds=60, **shared
    )
    store = store_at(database_url)
    secret, rec = store.create("burst", budget=BUDGET)
    server = LiveServer(app)
    try:
        admitted, refused = admitted_and_refused(burst(server.url, secret, Hold(upstream)))
        assert admitted * USAGE <= BUDGET
        assert admitted == BUDGET // ESTIMATE and refused == BURST - admitted  # 5 reservations of 8 fit in 40
        writer = guard_of(app).writer
        assert writer.wait_received(admitted, timeout=10)  # `done` runs as the response closes, after the client has it
        writer.flush()
        assert store.lookup_by_id(rec.id).spent_tokens == admitted * USAGE  # 35
        # 35 spent, nothing reserved: another 8 would not fit
        again = requests.post(
            server.url + "/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {secret}"}, timeout=10
        )
        assert again.status_code == 429 and again.json()["error"]["code"] == "insufficient_quota"
        assert "remain" in again.json()["error"]["message"]
    finally:
        server.stop()


def test_max_tokens_is_reserved(make_app, store_at, sqlite_url, shared, upstream):
    app = make_app(virtual_keys=True, database_url=sqlite_url, usage_accounting=True, usage_flush_seconds=60, **shared)
    store = store_at(sqlite_url)
    secret, _ = store.create("capped", budget=BUDGET)
    server = LiveServer(app)
    try:
        body = {**CHAT, "max_tokens": 20}  # reserves 8 + 20 = 28: one at a time in 40
        admitted, _ = admitted_and_refused(burst(server.url, secret, Hold(upstream), body=body, n=20))
        assert admitted == 1
        assert guard_of(app).writer.wait_received(1, timeout=10)  # settled: 7 spent, nothing held
        upstream.responder = None
        too_big = requests.post(
            server.url + "/v1/chat/completions",
            json={**CHAT, "max_completion_tokens": 30},
            headers={"Authorization": f"Bearer {secret}"},
            timeout=10,
        )
        err = too_big.json()["error"]  # 7 spent, 38 asked, 33 left
        assert too_big.status_code == 429 and err["code"] == "insufficient_quota"
        assert "33" in err["message"] and "max_tokens" in err["message"]
        ok = requests.post(
            server.url + "/v1/chat/completions",
            json={**CHAT, "max_completion_tokens": 25},
            headers={"Authorization": f"Bearer {secret}"},
            timeout=10,
        )
        assert ok.status_code == 200  # 8 + 25 = 33 fits exactly
    finally:
        server.stop()


# -- the reservation itself, per limiter -------------------------------------------------


def test_estimate_covers_what_the_request_may_spend():
    assert estimate_reserve("chat", CHAT, ESTIMATE, cap=1000, max_n=8) == ESTIMATE
    assert estimate_reserve("chat", {**CHAT, "max_tokens": 100}, ESTIMATE, cap=1000, max_n=8) == 108
    assert (
        estimate_reserve("chat", {**CHAT, "max_completion_tokens": 50, "max_tokens": 100}, ESTIMATE, cap=1000, max_n=8)
        == 58
    )
    assert estimate_reserve("chat", {**CHAT, "max_tokens": 100, "n": 3}, ESTIMATE, cap=1000, max_n=8) == 308
    assert (
        estimate_reserve("chat", {**CHAT, "max_tokens": 10**12, "n": 10**6}, ESTIMATE, cap=1000, max_n=8)
        == ESTIMATE + 1000 * 8
    )
    assert estimate_reserve("completions", {"prompt": "x", "max_tokens": 16, "best_of": 2}, 1, cap=1000, max_n=8) == 33
    for junk in ("12", -5, True, 1.5, None):  # not a count: only the prompt is reserved
        assert estimate_reserve("chat", {**CHAT, "max_tokens": junk}, ESTIMATE, cap=1000, max_n=8) == ESTIMATE
    assert estimate_reserve("models", None, 0, cap=1000, max_n=8) == 1  # at least one token
    assert estimate_reserve("embeddings", {"input": "x", "max_tokens": 99}, 1, cap=1000, max_n=8) == 1


@pytest.fixture(params=["memory", "redis"])
def limiter_factory(request) -> Iterator:
    made = []

    def build(lease_seconds: float = 300.0):
        if request.param == "memory":
            lim = MemoryLimiter(lease_seconds=lease_seconds)
        else:
            prefix = request.getfixturevalue("redis_prefix")
            lim = RedisLimiter(TEST_REDIS_URL, prefix, lease_seconds)
        made.append(lim)
        return lim

    yield build
    for lim in made:
        if isinstance(lim, RedisLimiter):
            lim.client.close()


def test_reservation_settled_with_real_usage(limiter_factory):
    lim = limiter_factory()
    limits = Limits(budget=30)
    subject = "key:" + uuid.uuid4().hex
    a, b = Ticket(subject, limits, 8, reserve=20), Ticket(subject, limits, 8, reserve=10)
    assert lim.admit(a).allowed and lim.admit(b).allowed
    refused = lim.admit(Ticket(subject, limits, 1, reserve=1))  # 30 reserved of 30
    assert not refused.allowed and refused.reason == "budget" and refused.remaining_budget == 0
    lim.release(a, 5)  # a used 5 of its 20: 5 spent + 10 reserved
    c = Ticket(subject, limits, 8, reserve=15)
    assert lim.admit(c).allowed
    assert lim.admit(Ticket(subject, limits, 1, reserve=1)).reason == "budget"
    lim.release(b, 0)
    lim.release(c, 0)
    # 5 spent; the store says 12 (another worker's usage): the store's figure is the floor
    d = Ticket(subject, limits, 1, reserve=18, spent_at_lookup=12)
    decision = lim.admit(d)
    assert decision.allowed and decision.remaining_budget == 0
    lim.release(d, 18)
    assert lim.admit(Ticket(subject, limits, 1, reserve=1, spent_at_lookup=12)).reason == "budget"  # 30 spent


def test_reservation_of_a_dead_worker_expires_with_its_lease(limiter_factory):
    lim = limiter_factory(lease_seconds=0.2)
    limits = Limits(budget=10)
    subject = "key:" + uuid.uuid4().hex
    assert lim.admit(Ticket(subject, limits, 1, reserve=10)).allowed  # never released: its worker died
    started = time.monotonic()
    assert lim.admit(Ticket(subject, limits, 1, reserve=1)).reason == "budget"
    deadline = started + 3
    while not lim.admit(Ticket(subject, limits, 1, reserve=1)).allowed:
        assert time.monotonic() < deadline, "the reservation never expired"
        time.sleep(0.02)  # waiting for the lease's time to pass (the thing under test)
    assert time.monotonic() - started >= 0.15


# -- real Gunicorn: 4 gevent workers sharing Redis and one key store ------------------------


@pytest.fixture(scope="module")
def gunicorn_redis(tmp_path_factory, _redis_client, module_upstream) -> Iterator[tuple[Gunicorn, str]]:
    prefix = f"cot-proxy-test:{uuid.uuid4().hex[:12]}:"
    db = f"sqlite:///{tmp_path_factory.mktemp('budget') / 'keys.db'}"
    KeyStore(db).ensure_schema()
    proxy = Gunicorn(
        {
            "VIRTUAL_KEYS": "true",
            "DATABASE_URL": db,
            "REDIS_URL": TEST_REDIS_URL,
            "REDIS_PREFIX": prefix,
            "USAGE_FLUSH_SECONDS": "0.2",
            "TARGET_BASE_URL": module_upstream.base_url,
        },
        workers=4,
    )
    yield proxy, db
    log = proxy.stop()
    assert "Traceback" not in log, log
    keys = list(_redis_client.scan_iter(match=prefix + "*", count=1000))
    if keys:
        _redis_client.delete(*keys)


def test_burst_across_gunicorn_workers(gunicorn_redis, module_upstream):
    proxy, db = gunicorn_redis
    store = KeyStore(db)
    try:
        secret, rec = store.create("burst", budget=BUDGET)
        module_upstream.reset()
        admitted, refused = admitted_and_refused(burst(proxy.url, secret, Hold(module_upstream)))
        module_upstream.responder = None
        assert admitted * USAGE <= BUDGET and admitted == BUDGET // ESTIMATE and refused == BURST - admitted
        deadline = time.monotonic() + 10
        while store.lookup_by_id(rec.id).spent_tokens < admitted * USAGE:  # the workers flush every 0.2 s
            assert time.monotonic() < deadline
            time.sleep(0.05)  # another process's timer: nothing to wait on but the store
        assert store.lookup_by_id(rec.id).spent_tokens == admitted * USAGE
    finally:
        store.close()

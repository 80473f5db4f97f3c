"""Client input that reaches SQL, on SQLite and PostgreSQL: GET /v1/usage's query parameters are checked
(400 naming the parameter, never a 500), and usage records (model and key names come from clients,
counts from the upstream) are made storable, so no request can break the background writer."""

from __future__ import annotations

from datetime import timedelta

import jwt
import pytest

from app.access.store import INT32_MAX, now_utc
from tests.support import guard_of

ADMIN = {"Authorization": "Bearer admin-token-0123456789"}
SECRET = "jwt-secret-for-usage-input-tests-0123"
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def app(database_url, make_app):
    return make_app(
        virtual_keys=True,
        usage_accounting=True,
        database_url=database_url,
        admin_token=ADMIN["Authorization"][7:],
        usage_flush_seconds=60,
        jwt_secret=SECRET,
        jwt_algorithms=("HS256",),
    )


def record(**changes):
    base = {
        "created_at": now_utc(),
        "request_id": "r",
        "key_id": None,
        "key_name": "team-a",
        "model": "m",
        "provider": "p",
        "prompt_tokens": 3,
        "completion_tokens": 4,
        "total_tokens": 7,
        "estimated": False,
        "streamed": False,
        "status": 200,
        "latency_ms": 10,
    }
    return {**base, **changes}


@pytest.mark.parametrize(
    "query, param",
    [
        ("key=%00", "key"),
        ("key=team%00a", "key"),
        ("key=a%01b", "key"),
        ("key=a%7Fb", "key"),
        ("key=a%C2%85b", "key"),  # C1 control (NEL)
        ("key=" + "k" * 201, "key"),
        ("key=a&key=b", "key"),
        ("since=%00", "since"),
        ("since=2024-01-01%00", "since"),
        ("since=" + "1" * 65, "since"),
        ("since=" + "1" * 5000, "since"),
        ("since=9999-12-31T23:59:59-05:00", "since"),  # past year 9999 in UTC
        ("since=0001-01-01T00:00:00%2B05:00", "since"),  # before year 1 in UTC
        ("since=99999999999999", "since"),
        ("since=%D9%A3", "since"),  # ARABIC-INDIC DIGIT THREE: a digit to str.isdigit, not Unix seconds
        ("since=nan", "since"),
        ("since=-1", "since"),
        ("since=1e9", "since"),
        ("since=yesterday", "since"),
        ("until=2024-13-01", "until"),
        ("until=2024%0B-01-01", "until"),
        ("until=1&until=2", "until"),
        ("since=2024-02-01&until=2024-01-01", "until"),
    ],
)
def test_bad_usage_params_are_400_naming_them(app, query, param):
    r = app.test_client().get("/v1/usage?" + query, headers=ADMIN)
    assert r.status_code == 400, r.get_data(as_text=True)
    err = r.get_json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param, err


def test_good_usage_params(app, store_at, database_url):
    store = store_at(database_url)
    store.add_usage([record(), record(key_name="équipe-β", created_at=now_utc() - timedelta(days=3))])
    c = app.test_client()
    assert [r["key"] for r in c.get("/v1/usage?key=%C3%A9quipe-%CE%B2", headers=ADMIN).get_json()["data"]] == [
        "équipe-β"
    ]
    assert [
        r["key"]
        for r in c.get(
            "/v1/usage?since=" + (now_utc() - timedelta(days=1)).isoformat().replace("+00:00", "Z"), headers=ADMIN
        ).get_json()["data"]
    ] == ["team-a"]
    assert len(c.get("/v1/usage?since=0&until=4102444800", headers=ADMIN).get_json()["data"]) == 2
    assert c.get("/v1/usage?key=&since=", headers=ADMIN).status_code == 200  # empty = not given
    assert c.get("/v1/usage?key=" + "k" * 200, headers=ADMIN).get_json()["data"] == []
    assert c.get("/v1/usage?since=2024-01-01&until=2024-01-01", headers=ADMIN).status_code == 200
    for odd in ("%FF%FE", "%ED%A0%80"):  # not UTF-8: werkzeug keeps the escapes as written, plain text
        r = c.get("/v1/usage?key=" + odd, headers=ADMIN)
        assert r.status_code == 200 and r.get_json()["data"] == []
    assert c.get("/v1/usage?since=%0A2024-01-01%20", headers=ADMIN).status_code == 200  # surrounding space


def test_unstorable_usage_records_are_made_storable(database_url, store_at):
    store = store_at(database_url)
    _, rec = store.create("team-a")
    written = store.add_usage(
        [
            record(key_id=rec.id, model="bad\x00model", key_name="sub\x00with\nnul", request_id="r\x00"),
            record(key_id=rec.id, model="lone \ud800 surrogate", provider="p\x1b[31m"),
            record(key_id=rec.id, model="m" * 1000, total_tokens=2**70, prompt_tokens=-5, latency_ms=10**12),
            record(key_id=rec.id, total_tokens="junk", completion_tokens=None, status=None, extra_field="ignored"),
        ]
    )
    assert written == 4
    models = {r["model"] for r in store.usage()}
    assert {"bad\ufffdmodel", "lone \ufffd surrogate", "m" * 200} <= models
    assert {r["key"] for r in store.usage()} == {"sub\ufffdwith\ufffdnul", "team-a"}
    assert store.lookup_by_id(rec.id).spent_tokens == 7 + 7 + INT32_MAX + 0


def test_a_batch_the_database_refuses_keeps_its_good_rows(database_url, store_at):
    store = store_at(database_url)
    _, rec = store.create("team-a")
    written = store.add_usage(
        [record(key_id=rec.id), record(key_id=rec.id, created_at=None), record(key_id=rec.id, total_tokens=5)]
    )
    assert written == 2  # the row without created_at (NOT NULL) is dropped, alone
    assert store.lookup_by_id(rec.id).spent_tokens == 12
    assert store.usage()[0]["requests"] == 2


def test_client_names_with_nul_reach_the_store_safely(app, store_at, database_url):
    """A JWT `sub` (the record's key name) and a model name with NUL or a lone surrogate, through the writer."""
    c = app.test_client()
    auth = {"Authorization": "Bearer " + jwt.encode({"sub": "team\x00nul"}, SECRET, algorithm="HS256")}
    assert c.post("/v1/chat/completions", json=CHAT, headers=auth, buffered=True).status_code == 200
    raw = b'{"model": "m\\ud800", "messages": [{"role": "user", "content": "hi"}]}'
    odd = c.post("/v1/chat/completions", data=raw, headers={**auth, "Content-Type": "application/json"}, buffered=True)
    writer = guard_of(app).writer
    assert writer.wait_received(1 + (odd.status_code == 200), timeout=10)
    assert writer.flush() and writer.pending() == 0 and writer.dropped == 0
    data = c.get("/v1/usage", headers=ADMIN).get_json()["data"]
    assert {r["key"] for r in data} == {"team\ufffdnul"}
    assert c.get("/v1/usage?key=team%00nul", headers=ADMIN).status_code == 400


def test_key_store_refuses_or_ignores_unusable_names(database_url, store_at):
    store = store_at(database_url)
    for bad in ("", "   ", "a\x00b", "tab\there", "x" * 201):
        with pytest.raises(ValueError, match="name"):
            store.create(bad)
    with pytest.raises(ValueError, match="model"):
        store.create("ok", models=["local/\x00*"])
    store.create("ok")
    assert store.usage(key="ok\x00") == [] and store.usage(key="o" * 5000) == []
    assert store.revoke("ok\x00") == [] and store.revoke("1\x00") == []
    assert [r.name for r in store.revoke("ok")] == ["ok"]

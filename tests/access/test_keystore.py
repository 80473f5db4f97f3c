"""The key store and the `keys` CLI, each on SQLite and on PostgreSQL; keys used over HTTP."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest

from app.access.store import KEY_PREFIX, hash_key, now_utc

CHAT = {"model": "local/qwen", "messages": [{"role": "user", "content": "hi"}]}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_create_lookup_list_revoke(database_url, store_at):
    store = store_at(database_url)
    secret, rec = store.create(
        "team-a",
        models=["local/*"],
        rpm=60,
        tpm=1000,
        max_concurrent=2,
        budget=5000,
        expires_at=now_utc() + timedelta(days=1),
    )
    assert secret.startswith(KEY_PREFIX) and len(secret) == len(KEY_PREFIX) + 43
    assert rec.hint == secret[-4:] and rec.status() == "active" and rec.models == ("local/*",)
    assert (rec.limits.rpm, rec.limits.tpm, rec.limits.concurrency, rec.limits.budget) == (60, 1000, 2, 5000)
    found = store.lookup(secret)
    assert found is not None and found.id == rec.id and found.expires_at == rec.expires_at
    assert store.lookup(secret + "x") is None
    with store.engine.connect() as conn:  # only the hash is stored
        rows = conn.exec_driver_sql("SELECT key_hash, key_hint FROM cot_api_keys").all()
    assert rows == [(hash_key(secret), secret[-4:])]
    other, _ = store.create("team-b")
    assert [r.name for r in store.list()] == ["team-a", "team-b"]
    assert [r.id for r in store.revoke("team-a")] == [rec.id]
    assert store.revoke("team-a") == []  # already revoked
    assert store.lookup(secret).status() == "revoked"
    assert [r.name for r in store.list(include_inactive=False)] == ["team-b"]
    assert len(store.revoke(other)) == 1  # by the key itself


def test_usage_records_and_spent(database_url, store_at):
    store = store_at(database_url)
    _, rec = store.create("team-a")
    base = {
        "created_at": now_utc(),
        "request_id": "r",
        "key_id": rec.id,
        "key_name": "team-a",
        "provider": "p",
        "streamed": False,
        "status": 200,
        "latency_ms": 10,
    }
    store.add_usage(
        [
            {**base, "model": "m1", "prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7, "estimated": False},
            {**base, "model": "m1", "prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2, "estimated": True},
            {
                **base,
                "model": "m2",
                "prompt_tokens": 0,
                "completion_tokens": 0,
                "total_tokens": 0,
                "estimated": False,
                "status": 500,
            },
        ]
    )
    rows = store.usage()
    assert rows[0] == {
        "key": "team-a",
        "model": "m1",
        "requests": 2,
        "prompt_tokens": 4,
        "completion_tokens": 5,
        "total_tokens": 9,
        "estimated_requests": 1,
        "errors": 0,
        "avg_latency_ms": 10.0,
    }
    assert rows[1]["model"] == "m2" and rows[1]["errors"] == 1
    assert store.lookup_by_id(rec.id).spent_tokens == 9
    assert store.usage(key="nobody") == []
    assert store.usage(since=now_utc() + timedelta(seconds=5)) == []


def test_cli_create_list_revoke_usage(database_url, make_app):
    app = make_app(database_url=database_url)
    cli = app.test_cli_runner()
    out = cli.invoke(
        args=[
            "keys",
            "create",
            "--name",
            "team-a",
            "--rpm",
            "60",
            "--tpm",
            "100000",
            "--models",
            "local/*",
            "--expires",
            "30d",
        ]
    )
    assert out.exit_code == 0, out.output
    secret = out.stdout.strip()
    assert secret.startswith(KEY_PREFIX) and "\n" not in secret
    assert "not shown again" in out.stderr
    listed = cli.invoke(args=["keys", "list", "--json"])
    [entry] = json.loads(listed.stdout)
    assert entry["name"] == "team-a" and entry["rpm"] == 60 and entry["models"] == ["local/*"]
    assert entry["key"].endswith(secret[-4:]) and secret not in listed.output
    table = cli.invoke(args=["keys", "list"])
    assert "team-a" in table.output and secret not in table.output
    revoked = cli.invoke(args=["keys", "revoke", "team-a"])
    assert revoked.exit_code == 0 and "revoked key" in revoked.output
    assert cli.invoke(args=["keys", "revoke", "team-a"]).exit_code == 1
    assert cli.invoke(args=["keys", "list", "--json"]).stdout.strip() == "[]"
    assert len(json.loads(cli.invoke(args=["keys", "list", "--all", "--json"]).stdout)) == 1
    usage = cli.invoke(args=["keys", "usage", "--json"])
    assert usage.exit_code == 0 and json.loads(usage.stdout) == []
    bad = cli.invoke(args=["keys", "create", "--name", "x", "--expires", "soon"])
    assert bad.exit_code != 0 and "--expires" in bad.output


def test_virtual_key_over_http(database_url, make_app, store_at, upstream):
    app = make_app(virtual_keys=True, database_url=database_url)
    store = store_at(database_url)
    secret, _ = store.create("team-a", models=["local/*"])
    c = app.test_client()
    ok = c.post("/v1/chat/completions", json=CHAT, headers=auth(secret), buffered=True)
    assert ok.status_code == 200
    assert "authorization" not in upstream.last.headers
    denied = c.post("/v1/chat/completions", json={**CHAT, "model": "gpt-4o"}, headers=auth(secret))
    assert denied.status_code == 403 and denied.get_json()["error"]["code"] == "model_not_allowed"
    unknown = c.post("/v1/chat/completions", json=CHAT, headers=auth(KEY_PREFIX + "x" * 43))
    assert unknown.status_code == 401 and unknown.get_json()["error"]["code"] == "invalid_api_key"


def test_revoked_key_refused_within_one_second(database_url, make_app, store_at):
    apps = [make_app(virtual_keys=True, database_url=database_url) for _ in range(2)]  # two "workers"
    store = store_at(database_url)
    secret, _ = store.create("team-a")
    clients = [a.test_client() for a in apps]
    for c in clients:  # both have the key cached as valid
        assert c.post("/v1/chat/completions", json=CHAT, headers=auth(secret), buffered=True).status_code == 200
    store.revoke("team-a")
    revoked_at = time.monotonic()
    for c in clients:
        status = 200
        while status == 200 and time.monotonic() - revoked_at < 3:  # bounded: 3 s at most
            status = c.post("/v1/chat/completions", json=CHAT, headers=auth(secret), buffered=True).status_code
        assert status == 401
    assert time.monotonic() - revoked_at < 1.0
    r = clients[0].post("/v1/chat/completions", json=CHAT, headers=auth(secret))
    assert "revoked" in r.get_json()["error"]["message"]


def test_expired_key_refused(database_url, make_app, store_at):
    app = make_app(virtual_keys=True, database_url=database_url)
    store = store_at(database_url)
    secret, _ = store.create("old", expires_at=now_utc() - timedelta(seconds=1))
    r = app.test_client().post("/v1/chat/completions", json=CHAT, headers=auth(secret))
    assert r.status_code == 401 and "expired" in r.get_json()["error"]["message"]


@pytest.mark.parametrize("shared", ["memory", "redis"])
def test_budget_exhaustion(database_url, make_app, store_at, shared, request):
    extra = request.getfixturevalue("redis_settings") if shared == "redis" else {}
    app = make_app(virtual_keys=True, database_url=database_url, usage_accounting=True, usage_flush_seconds=60, **extra)
    store = store_at(database_url)
    # the fake upstream's answer costs 7 tokens; each request holds its 8-token prompt estimate while it runs
    secret, rec = store.create("small", budget=16)
    c = app.test_client()
    assert c.post("/v1/chat/completions", json=CHAT, headers=auth(secret), buffered=True).status_code == 200  # 7 spent
    assert c.post("/v1/chat/completions", json=CHAT, headers=auth(secret), buffered=True).status_code == 200  # 14 spent
    r = c.post("/v1/chat/completions", json=CHAT, headers=auth(secret), buffered=True)
    assert r.status_code == 429
    err = r.get_json()["error"]
    assert err["code"] == "insufficient_quota" and err["type"] == "insufficient_quota"
    assert r.headers["x-should-retry"] == "false" and "Retry-After" not in r.headers
    from tests.support import guard_of

    guard_of(app).writer.flush()
    assert store.lookup_by_id(rec.id).spent_tokens == 14
    # a fresh worker (empty limiter state) still knows: the spend comes from the store
    fresh = make_app(virtual_keys=True, database_url=database_url, **extra).test_client()
    assert fresh.post("/v1/chat/completions", json=CHAT, headers=auth(secret), buffered=True).status_code == 429

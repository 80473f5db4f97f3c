"""Usage accounting: one record per request, streamed or not, with or without the client's include_usage;
estimated when the upstream reports none; read back with GET /v1/usage and `keys usage`."""

from __future__ import annotations

import json

import openai
import pytest
import requests

from app.access.store import usage_records
from tests.fakes.openai_upstream import chat_chunk, chat_completion, json_reply, sse_reply
from tests.support import LiveServer, guard_of

ADMIN = "admin-token-0123456789"
MSG = [{"role": "user", "content": "hi"}]


@pytest.fixture
def setup(database_url, make_app, store_at):
    app = make_app(
        virtual_keys=True, usage_accounting=True, database_url=database_url, admin_token=ADMIN, usage_flush_seconds=30
    )  # flushed by hand below: no waiting on the timer
    store = store_at(database_url)
    secret, rec = store.create("team-a")
    server = LiveServer(app)
    sdk = openai.OpenAI(base_url=server.url + "/v1", api_key=secret, max_retries=0, timeout=10)
    yield app, store, server, sdk, rec
    server.stop()


def stream(server, sdk, **body) -> list[dict]:
    """A streamed chat call, read to its very end; returns the JSON chunks the client saw.

    Not through the SDK: it hangs up right after `[DONE]`, before the closing chunk, and the
    werkzeug test server then skips closing the response, so the `done` hooks would never run
    (Gunicorn always closes it; see test_gunicorn_access.py for the SDK streaming through it)."""
    r = requests.post(
        server.url + "/v1/chat/completions",
        json={"messages": MSG, "stream": True, **body},
        headers={"Authorization": f"Bearer {sdk.api_key}"},
        timeout=10,
    )
    assert r.status_code == 200
    lines = [ln[6:] for ln in r.text.split("\n") if ln.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(ln) for ln in lines[:-1]]


def rows(store):
    with store.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(usage_records.select().order_by(usage_records.c.id))]


def test_usage_recorded_for_every_kind_of_call(setup, upstream):
    app, store, server, sdk, rec = setup
    out = sdk.chat.completions.create(model="m1", messages=MSG)
    assert out.usage.total_tokens == 7
    chunks = stream(server, sdk, model="m1")
    assert all("usage" not in c for c in chunks) and chunks[-1]["choices"]  # the client asked for no usage chunk
    chunks = stream(server, sdk, model="m1", stream_options={"include_usage": True})
    assert chunks[-1]["usage"]["total_tokens"] == 6 and chunks[-1]["choices"] == []
    # an upstream that reports no usage: estimated from the prompt and the generated text
    no_usage = chat_completion("Hello there, friend")  # 19 characters -> 5 tokens
    del no_usage["usage"]
    upstream.enqueue(json_reply(no_usage))
    sdk.chat.completions.create(model="m2", messages=MSG)
    upstream.enqueue(sse_reply([chat_chunk("Hello", role="assistant"), chat_chunk(" world!", finish="stop")]))
    assert len(stream(server, sdk, model="m2")) == 2
    writer = guard_of(app).writer
    assert writer.wait_received(5, timeout=5)  # `done` runs as the server closes each response
    assert writer.flush()

    got = [
        (
            r["model"],
            r["prompt_tokens"],
            r["completion_tokens"],
            r["total_tokens"],
            r["estimated"],
            r["streamed"],
            r["status"],
        )
        for r in rows(store)
    ]
    assert got == [
        ("m1", 3, 4, 7, False, False, 200),
        ("m1", 3, 3, 6, False, True, 200),
        ("m1", 3, 3, 6, False, True, 200),
        ("m2", 8, 5, 13, True, False, 200),
        ("m2", 8, 3, 11, True, True, 200),
    ]
    assert {r["key_id"] for r in rows(store)} == {rec.id} and {r["key_name"] for r in rows(store)} == {"team-a"}
    assert all(r["provider"] and r["latency_ms"] >= 0 and r["request_id"] for r in rows(store))
    assert store.lookup_by_id(rec.id).spent_tokens == 7 + 6 + 6 + 13 + 11


def test_usage_endpoint_and_cli(setup, upstream):
    app, store, server, sdk, rec = setup
    sdk.chat.completions.create(model="m1", messages=MSG)
    stream(server, sdk, model="m1")
    sdk.embeddings.create(model="e1", input="hello")
    assert guard_of(app).writer.wait_received(3, timeout=5)
    url = server.url + "/v1/usage"
    assert requests.get(url, timeout=5).status_code == 401
    wrong = requests.get(url, headers={"Authorization": "Bearer not-the-admin"}, timeout=5)
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    # a key of the proxy is not the admin token
    assert requests.get(url, headers={"Authorization": "Bearer " + sdk.api_key}, timeout=5).status_code == 401
    r = requests.get(url, headers={"Authorization": "Bearer " + ADMIN}, timeout=5)  # flushes this worker first
    assert r.status_code == 200
    data = {(d["key"], d["model"]): d for d in r.json()["data"]}
    assert data[("team-a", "m1")]["requests"] == 2 and data[("team-a", "m1")]["total_tokens"] == 13
    assert data[("team-a", "e1")]["prompt_tokens"] == 2
    only = requests.get(url, params={"key": "nobody"}, headers={"Authorization": "Bearer " + ADMIN}, timeout=5)
    assert only.json()["data"] == []
    bad = requests.get(url, params={"since": "yesterday"}, headers={"Authorization": "Bearer " + ADMIN}, timeout=5)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "since"
    cli = app.test_cli_runner().invoke(args=["keys", "usage", "--json", "--key", "team-a"])
    assert cli.exit_code == 0
    assert {(d["model"], d["requests"]) for d in json.loads(cli.stdout)} == {("m1", 2), ("e1", 1)}
    table = app.test_cli_runner().invoke(args=["keys", "usage"])
    assert "team-a" in table.output and "m1" in table.output


def test_usage_endpoint_off_without_admin_token(make_app):
    r = make_app().test_client().get("/v1/usage", headers={"Authorization": "Bearer x"})
    assert r.status_code == 404 and r.get_json()["error"]["code"] == "usage_disabled"


def test_refused_requests_are_not_recorded(setup, upstream):
    app, store, server, sdk, rec = setup
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-cp-unknown-key-0000", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="m1", messages=MSG)
    sdk.chat.completions.create(model="m1", messages=MSG)
    writer = guard_of(app).writer
    assert writer.wait_received(1, timeout=5) and writer.flush()
    assert [r["key_name"] for r in rows(store)] == ["team-a"]  # the refused call left no record

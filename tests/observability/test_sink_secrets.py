"""Completion sinks never write a credential: secret-named values at any depth and bearer
tokens are "[redacted]" in what the JSONL file, the webhook and a user sink receive,
while the rest of the record (messages, usage, logprob tokens, tool schemas) is kept."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from app import create_app
from app.observability.settings import ObservabilitySettings
from app.observability.sinks import REDACTED, redact, redact_record, secret_name
from tests.fakes.openai_upstream import FakeUpstream, chat_completion, json_reply
from tests.observability import sink_fixture
from tests.support import LiveServer, proxy_config

SECRETS = {
    "body": "sk-body-SECRET-11112222",
    "nested": "sk-nested-SECRET-33334444",
    "token": "tok-SECRET-55556666",
    "password": "hunter2-SECRET-7777",
    "in_text": "sk-text-SECRET-88889999",
    "header": "sk-header-SECRET-aaaabbbb",
    "answer": "sk-answer-SECRET-ccccdddd",
}


class _Webhook:
    """An HTTP server that keeps every JSON body POSTed to it."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.arrived = threading.Event()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                hook.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()
                hook.arrived.set()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook() -> Iterator[_Webhook]:
    hook = _Webhook()
    yield hook
    hook.close()


def _record_in(path: Path, request_id: str, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            for line in path.read_text().splitlines():
                record = json.loads(line)
                if record["request_id"] == request_id:
                    return record
        time.sleep(0.02)  # polling the sink's file, bounded
    raise AssertionError(f"no record for {request_id} in {path} within {timeout} s")


def test_every_sink_gets_the_record_without_secrets(upstream: FakeUpstream, webhook: _Webhook, tmp_path: Path):
    sink_fixture.RECORDS.clear()
    sink_fixture.ARRIVED.clear()
    jsonl = tmp_path / "completions.jsonl"
    settings = ObservabilitySettings(
        completion_log_file=str(jsonl), webhook_url=webhook.url, sinks=("tests.observability.sink_fixture:ListSink",)
    )
    answer = chat_completion("Hello from upstream", "m")
    answer["choices"][0]["logprobs"] = {
        "content": [
            {"token": "Hello", "logprob": -0.1, "bytes": [72], "top_logprobs": [{"token": "Hi", "logprob": -2.0}]}
        ]
    }
    answer["debug"] = {"echoed_headers": {"authorization": f"Bearer {SECRETS['answer']}"}}
    upstream.enqueue(json_reply(answer))
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": f"my key is Bearer {SECRETS['in_text']} ok; the bearer of news"}],
        "max_tokens": 20,
        "api_key": SECRETS["body"],
        "user": "u-42",
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "login",
                    "parameters": {
                        "type": "object",
                        "properties": {"token": {"type": "string"}, "password": {"type": "string"}},
                        "required": ["token", "password"],
                    },
                },
            }
        ],
        "extra": {
            "Provider-Config": [{"Access_Token": SECRETS["token"], "region": "eu"}],
            "deep": {"a": {"b": {"X-API-KEY": SECRETS["nested"], "clientSecret": SECRETS["password"]}}},
        },
    }
    rid = "sink-secrets-1"
    server = LiveServer(create_app(proxy_config(upstream, observability=settings)))
    try:
        r = requests.post(
            server.url + "/v1/chat/completions",
            json=body,
            timeout=10,
            headers={"Authorization": f"Bearer {SECRETS['header']}", "X-Request-ID": rid},
        )
        assert r.status_code == 200
        assert sink_fixture.ARRIVED.wait(10) and webhook.arrived.wait(10)
        from_file = _record_in(jsonl, rid)
    finally:
        server.stop()
    from_hook = next(b for b in webhook.bodies if b["request_id"] == rid)
    from_user_sink = next(rec for rec in sink_fixture.RECORDS if rec["request_id"] == rid)
    raw = jsonl.read_text() + json.dumps(webhook.bodies) + json.dumps(sink_fixture.RECORDS)
    for name, secret in SECRETS.items():
        assert secret not in raw, f"{name} secret written by a sink"

    for record in (from_file, from_hook, from_user_sink):
        request = record["request"]
        assert request["api_key"] == REDACTED
        assert request["extra"]["Provider-Config"] == [{"Access_Token": REDACTED, "region": "eu"}]
        assert request["extra"]["deep"]["a"]["b"] == {"X-API-KEY": REDACTED, "clientSecret": REDACTED}
        assert request["messages"][0]["content"] == f"my key is Bearer {REDACTED} ok; the bearer of news"
        assert request["tools"] == body["tools"]  # a schema's property names are not values
        assert (request["model"], request["max_tokens"], request["user"]) == ("m", 20, "u-42")
        response = record["response"]
        assert response["debug"] == {"echoed_headers": {"authorization": REDACTED}}
        assert response["choices"][0]["logprobs"] == answer["choices"][0]["logprobs"]
        assert response["choices"][0]["message"]["content"] == "Hello from upstream"
        assert record["usage"] == answer["usage"] and response["usage"] == answer["usage"]
        assert record["client"]["key"] == "…" + SECRETS["header"][-4:]  # the proxy's own hint stays


@pytest.mark.parametrize(
    "name",
    [
        "api_key",
        "apikey",
        "API-KEY",
        "x-api-key",
        "apiKey",
        "key",
        "Token",
        "access_token",
        "refresh-token",
        "id_token",
        "secret",
        "client_secret",
        "password",
        "db_password",
        "Authorization",
        "proxy-authorization",
        "openai_api_key",
        "aws_secret_access_key",
        "private_key",
        "Cookie",
        "auth",
    ],
)
def test_secret_names(name):
    assert secret_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "max_tokens",
        "prompt_tokens",
        "total_tokens",
        "keys",
        "monkey",
        "prompt_cache_key",
        "model",
        "messages",
        "tokenizer",
        "keyword",
        "author",
        "stop_token_ids",
    ],
)
def test_names_that_are_not_secrets(name):
    assert not secret_name(name)


def test_redact_keeps_shapes_and_plain_values():
    assert redact({"key": None, "token": True, "api_key": 7, "secret": ["a", "b"]}) == {
        "key": None,
        "token": True,
        "api_key": REDACTED,
        "secret": REDACTED,
    }
    assert redact({"auth": {"user": "u", "password": "p"}}) == {"auth": {"user": "u", "password": REDACTED}}
    assert redact("Bearer abc") == REDACTED
    assert redact("a bearer bond") == "a bearer bond"
    deep: Any = "x"
    for _ in range(150):
        deep = {"d": deep}
    text = json.dumps(redact(deep))
    assert '"x"' not in text and REDACTED in text  # too deep to check: not kept
    record = {"request": {"api_key": "sk-1"}, "client": {"address": "127.0.0.1", "key": "team-a"}}
    assert redact_record(record) == {
        "request": {"api_key": REDACTED},
        "client": {"address": "127.0.0.1", "key": "team-a"},
    }
    assert record["request"]["api_key"] == "sk-1"  # the original is not changed

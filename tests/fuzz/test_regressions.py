"""The 5xx causes the fuzzing found, one reproducer each.

Fixed ones assert the 400 that names the field, or the answer. A cause found in a file the fuzz
work does not own goes here as `xfail(strict=True)` with that file in the reason, and into
support.KNOWN_FAILURES; once it is fixed, strict makes the test fail until the mark and the entry
come out together (as they did for the model header and the /v1/usage ones).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from flask import Flask

from app import create_app
from app.access.settings import AccessSettings
from tests.fuzz import support
from tests.fuzz.strategies import nested
from tests.fuzz.support import Target

MSG = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def lax_apps(fuzz_upstream: Any) -> Iterator[dict[str, Flask]]:
    """STRICT_VALIDATION=false: only the always-on checks stand between odd bodies and the proxy."""
    lax = AccessSettings(strict_validation=False)
    apps = {
        "echo": create_app(replace(support.echo_config(), access=lax)),
        "proxy": create_app(replace(support.relay_config(fuzz_upstream), access=lax)),
    }
    yield apps
    support.close_apps(*apps.values())


def _post(app: Flask, path: str, body: Any) -> tuple[int, dict[str, Any] | None, bytes, Any]:
    r = app.test_client().post(path, json=body)
    content = r.get_data()
    assert not support.problems(r.status_code, r.headers, content), support.problems(r.status_code, r.headers, content)
    return r.status_code, (r.get_json(silent=True) or {}).get("error"), content, r.headers


FIXED = [
    # (name, path, body, param the 400 names)
    ("role-list", "/v1/chat/completions", {"messages": [{"role": ["user"], "content": "x"}]}, "messages[0].role"),
    ("role-object", "/v1/chat/completions", {"messages": [{"role": {"a": 1}, "content": "x"}]}, "messages[0].role"),
    (
        "tool_calls-127",
        "/v1/chat/completions",
        {"messages": [{"role": "assistant", "tool_calls": 127}]},
        "messages[0].tool_calls",
    ),
    (
        "tool_calls-item",
        "/v1/chat/completions",
        {"messages": [{"role": "assistant", "tool_calls": [1]}]},
        "messages[0].tool_calls[0]",
    ),
    (
        "tool_calls-function",
        "/v1/chat/completions",
        {"messages": [{"role": "assistant", "tool_calls": [{"function": "f"}]}]},
        "messages[0].tool_calls[0].function",
    ),
    (
        "content-part-text",
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": [{"type": "text", "text": 3}]}]},
        "messages[0].content[0].text",
    ),
    (
        "content-part-text-null",
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "u", "text": None}]}]},
        "messages[0].content[0].text",
    ),
    ("nested-254", "/v1/chat/completions", {"messages": MSG, "x": nested(253, "list")}, None),
    ("nested-200", "/v1/chat/completions", {"messages": MSG, "x": nested(200, "dict")}, None),
    (
        "stream_options-list",
        "/v1/chat/completions",
        {"messages": MSG, "stream": True, "stream_options": [1]},
        "stream_options",
    ),
    (
        "stream_options-string",
        "/v1/completions",
        {"prompt": "x", "stream": True, "stream_options": "a"},
        "stream_options",
    ),
    (
        "include_usage-string",
        "/v1/chat/completions",
        {"messages": MSG, "stream": True, "stream_options": {"include_usage": "yes"}},
        "stream_options.include_usage",
    ),
    ("model-crlf", "/v1/chat/completions", {"model": "a\r\nb", "messages": MSG}, "model"),
    ("model-nul", "/v1/embeddings", {"model": "a\x00", "input": "x"}, "model"),
    ("stream-string", "/v1/chat/completions", {"messages": MSG, "stream": "yes"}, "stream"),
    (
        "dimensions-true",
        "/v1/embeddings",
        {"input": "x", "dimensions": True, "encoding_format": "base64"},
        "dimensions",
    ),
    ("dimensions-huge", "/v1/embeddings", {"input": "x", "dimensions": 10**30}, "dimensions"),
    ("input-null-item", "/v1/embeddings", {"input": [None]}, "input[0]"),
    ("input-mixed", "/v1/embeddings", {"input": ["a", 1]}, "input[1]"),
    ("input-token-out-of-range", "/v1/embeddings", {"input": [1, -1]}, "input[1]"),
    ("prompt-object-item", "/v1/completions", {"prompt": [{"a": 1}]}, "prompt[0]"),
    ("prompt-token-lists", "/v1/completions", {"prompt": [[1, 2], [3, "x"]]}, "prompt[1]"),
]


@pytest.mark.parametrize("strictness", ["strict", "lax"])
@pytest.mark.parametrize("mode", ["echo", "proxy"])
@pytest.mark.parametrize("name, path, body, param", FIXED, ids=[f[0] for f in FIXED])
def test_fixed_causes_are_400_naming_the_field(
    request: pytest.FixtureRequest,
    targets: dict[str, Target],
    lax_apps: dict[str, Flask],
    mode: str,
    strictness: str,
    name: str,
    path: str,
    body: dict[str, Any],
    param: str | None,
) -> None:
    app = targets[mode].app if strictness == "strict" else lax_apps[mode]
    status, error, content, _ = _post(app, path, {"model": "m", **body})
    assert status == 400, content[:300]
    assert error is not None and error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param, error


@pytest.mark.parametrize("mode", ["echo", "proxy"])
@pytest.mark.parametrize(
    "path, body",
    [
        (
            "/v1/chat/completions",
            {
                "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                "stream": None,
                "stream_options": None,
            },
        ),
        ("/v1/chat/completions", {"messages": MSG, "stream": True, "stream_options": {"include_usage": None}}),
        ("/v1/completions", {"prompt": None}),
        ("/v1/completions", {"prompt": [[1, 2], []], "stream": True, "stream_options": {"include_usage": True}}),
        ("/v1/embeddings", {"input": [[1, 2], [3]], "encoding_format": None, "dimensions": None}),
        ("/v1/embeddings", {"input": "x", "dimensions": 8, "encoding_format": "base64"}),
        ("/v1/chat/completions", {"messages": MSG, "x": nested(100, "list")}),
    ],
    ids=[
        "nulls",
        "include_usage-null",
        "prompt-null",
        "token-lists",
        "embedding-token-lists",
        "base64-dims",
        "nested-100",
    ],
)
def test_valid_odd_bodies_still_accepted(
    targets: dict[str, Target], mode: str, path: str, body: dict[str, Any]
) -> None:
    status, _, content, _ = _post(targets[mode].app, path, {"model": "m", **body})
    assert status == 200, content[:300]


@pytest.mark.parametrize("mode", ["proxy", "routed"])
def test_model_outside_latin1_keeps_headers_sendable(targets: dict[str, Target], mode: str) -> None:
    """Formerly a 500 behind Gunicorn: the model went into x-cot-proxy-provider. Fixed in app/relay.py
    (unsafe header values are dropped); `_post` checks every header is sendable."""
    status, _, content, _ = _post(targets[mode].app, "/v1/chat/completions", {"model": "b/模型", "messages": MSG})
    assert status == 200, content[:300]


# -- causes found outside the fuzz work's files, fixed there -------------------------------------


@pytest.fixture
def usage_app(fuzz_upstream: Any, tmp_path: Any) -> Iterator[Flask]:
    app = create_app(support.auth_config(fuzz_upstream, f"sqlite:///{tmp_path / 'keys.db'}"))
    yield app
    support.close_apps(app)


ADMIN = {"Authorization": f"Bearer {support.ADMIN_TOKEN}"}


@pytest.mark.parametrize(
    "query, param",
    [
        ("since=0001-01-01T00:00:00%2B01:00", "since"),
        ("until=9999-12-31T23:59:59-01:00", "until"),
        ("key=a%00b", "key"),
    ],
)
def test_usage_query_out_of_range_is_400(usage_app: Flask, query: str, param: str) -> None:
    """Formerly 500s: a time that leaves datetime's range in UTC (OverflowError outside the try).
    Fixed in app/access/api.py (7d580f1)."""
    r = usage_app.test_client().get(f"/v1/usage?{query}", headers=ADMIN)
    assert r.status_code == 400, r.get_data()[:300]
    assert r.get_json()["error"]["param"] == param


def test_usage_key_with_nul_on_postgresql(fuzz_upstream: Any, postgresql_url: str) -> None:
    """Formerly a 500 on PostgreSQL (psycopg refuses NUL in a string literal). Fixed in
    app/access/api.py (7d580f1): 400 naming `key`."""
    app = create_app(support.auth_config(fuzz_upstream, postgresql_url))
    try:
        r = app.test_client().get("/v1/usage?key=a%00b", headers=ADMIN)
        assert not support.problems(r.status_code, r.headers, r.get_data())
        assert r.status_code == 400 and r.get_json()["error"]["param"] == "key"
    finally:
        support.close_apps(app)

"""Strict input checks (STRICT_VALIDATION, default on): 400 naming `param`; off lets odd bodies through."""

from __future__ import annotations

import pytest

MSG = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    "extra, param",
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": -5}, "max_tokens"),
        ({"max_tokens": 1.5}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"max_tokens": 5000}, "max_tokens"),  # over MAX_TOKENS_CAP=4096 below
        ({"max_completion_tokens": "10"}, "max_completion_tokens"),
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"n": 0}, "n"),
        ({"n": 9}, "n"),  # over MAX_N=8 below
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": 5}, "stop"),
        ({"stop": ["a", 1]}, "stop"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": [{"text": "no type"}]}]}, "messages[0].content[0]"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": 3}]}]}, "messages[0].content[0].text"),
        ({"messages": [{"role": "bot", "content": "x"}]}, "messages[0].role"),
        ({"tools": {"type": "function"}}, "tools"),
        ({"tools": [{"type": "function"}]}, "tools[0].function"),
        ({"tools": [{"type": "function", "function": {"name": ""}}]}, "tools[0].function.name"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]},
            "tools[0].function.parameters",
        ),
    ],
)
def test_strict_checks_name_the_param(make_app, upstream, extra, param):
    c = make_app(max_tokens_cap=4096, max_n=8).test_client()
    r = c.post("/v1/chat/completions", json={"model": "m", "messages": MSG, **extra})
    assert r.status_code == 400, r.get_json()
    assert r.get_json()["error"]["param"] == param
    assert r.get_json()["error"]["type"] == "invalid_request_error"
    assert upstream.requests == []


@pytest.mark.parametrize(
    "extra",
    [
        {"max_tokens": 4096, "temperature": 0, "n": 8, "stop": ["a", "b", "c", "d"]},
        {"max_completion_tokens": 1, "temperature": 2, "stop": "END"},
        {
            "messages": [
                {"role": "system", "content": "s"},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "look"},
                        {"type": "image_url", "image_url": {"url": "data:,x"}},
                    ],
                },
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{"id": "1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
                },
                {"role": "tool", "tool_call_id": "1", "content": "42"},
            ]
        },
        {
            "tools": [
                {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}},
                {"type": "web_search"},
            ],
            "unknown_field": {"passes": True},
        },
    ],
)
def test_valid_bodies_pass(make_app, upstream, extra):
    c = make_app(max_tokens_cap=4096, max_n=8).test_client()
    assert c.post("/v1/chat/completions", json={"model": "m", "messages": MSG, **extra}).status_code == 200


def test_completions_checked_too(make_app):
    c = make_app().test_client()
    r = c.post("/v1/completions", json={"model": "m", "prompt": "x", "n": 0})
    assert r.status_code == 400 and r.get_json()["error"]["param"] == "n"


def test_switch_off_relaxes(make_app, upstream):
    c = make_app(strict_validation=False).test_client()
    odd = {"model": "m", "messages": [{"role": "user", "content": 5}], "temperature": 7, "max_tokens": 0}
    assert c.post("/v1/chat/completions", json=odd).status_code == 200
    assert upstream.last.json()["temperature"] == 7


def test_auth_comes_before_validation(make_app):
    c = make_app(bearer_tokens=("gw-token-0123456789",)).test_client()
    r = c.post("/v1/chat/completions", json={"model": "m", "messages": MSG, "n": 0})
    assert r.status_code == 401

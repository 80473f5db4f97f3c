"""Hostile `/v1/responses` bodies, translated: every answer is a 200 or an OpenAI-shaped 4xx, never a 500.

Each body is a valid request with one field (top level, an input item, or a part of it) replaced by
arbitrary JSON (tests/fuzz/strategies.py); the chat-only fake answers whatever reaches it."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app import create_app
from tests.fakes.chat_only_upstream import ChatOnlyUpstream
from tests.fuzz.strategies import json_values
from tests.translate.conftest import config_for

VALID: dict[str, Any] = {
    "model": "m",
    "instructions": "Be brief.",
    "max_output_tokens": 20,
    "temperature": 0.5,
    "top_p": 1,
    "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
    "tool_choice": "auto",
    "input": [
        {
            "role": "user",
            "content": [
                {"type": "input_text", "text": "hi"},
                {"type": "input_image", "image_url": "data:image/png;base64,AA"},
            ],
        },
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "ok"},
    ],
    "text": {"format": {"type": "text"}},
    "reasoning": {"effort": "low"},
    "store": False,
}
FIELDS = [*VALID, "previous_response_id", "stream", "parallel_tool_calls", "user", "metadata", "background"]


def _places(body: dict[str, Any]) -> list[tuple[Any, Any]]:
    """(container, key) pairs a value may be put at: top-level fields, item fields, content parts."""
    out: list[tuple[Any, Any]] = [(body, k) for k in FIELDS]
    for item in body["input"]:
        out += [(item, k) for k in ("type", "role", "content", "call_id", "name", "arguments", "output")]
    out += [(body["input"], 0), (body["input"][0]["content"], 1), (body["tools"], 0)]
    out += [(body["input"][0]["content"][1], k) for k in ("type", "image_url", "detail")]
    out += [(body["tools"][0], k) for k in ("type", "name", "parameters")]
    return out


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(place=st.integers(min_value=0, max_value=len(_places(copy.deepcopy(VALID))) - 1), value=json_values)
def test_one_hostile_field_is_never_a_500(_chat_only_server: ChatOnlyUpstream, place: int, value: Any):
    _chat_only_server.reset()
    body = copy.deepcopy(VALID)
    container, key = _places(body)[place]
    container[key] = value
    client = _client(_chat_only_server)
    r = client.post("/v1/responses", json=body)
    assert r.status_code in (200, 400), (r.status_code, body, r.get_data()[:300])
    data = r.get_json()
    if r.status_code == 400:
        assert data["error"]["type"] == "invalid_request_error" and data["error"]["message"]
    elif not body.get("stream"):
        assert data["object"] == "response"


_clients: dict[int, Any] = {}


def _client(upstream: ChatOnlyUpstream):
    """One app per fake (building one per example would dominate the run)."""
    if upstream.port not in _clients:
        _clients[upstream.port] = create_app(config_for(upstream, RESPONSES_API="translate")).test_client()
    return _clients[upstream.port]

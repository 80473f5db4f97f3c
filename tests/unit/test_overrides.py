"""The overrides step alone, on hand-made exchanges (no Flask, no network)."""

from __future__ import annotations

from typing import Any

import pytest

from app.exchange import Exchange
from app.model_params import parse_llm_params
from app.sse import Event
from app.transforms.model_name import ModelName
from app.transforms.overrides import Overrides, append_to_last_user_message

PARAMS = (
    "model=r1,upstream_model_name=deepseek-r1:14b,temperature=0.6,default.max_tokens=100,"
    "append_to_last_user_message=\\n/no_think;"
    "model=*,top_k=20;"
    "model=embed,upstream_model_name=nomic,dimensions=8"
)


def _ex(body: dict[str, Any] | None, family: str = "chat", method: str = "POST", path: str = "chat/completions"):
    model = body.get("model") if body else None
    return Exchange("req-1", family, method, path, body=body, client_model=model)


@pytest.fixture
def step() -> Overrides:
    return Overrides(parse_llm_params(PARAMS), created=1700000000)


def _request(step: Overrides, ex: Exchange) -> dict[str, Any] | None:
    if step.applies(ex):
        step.request(ex)
    return ex.body


def test_strong_overrides_weak_defaults_alias_and_append(step):
    body = {"model": "r1", "temperature": 1.5, "messages": [{"role": "user", "content": "hi"}]}
    assert _request(step, _ex(body)) == {
        "model": "deepseek-r1:14b",
        "temperature": 0.6,
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "hi\n/no_think"}],
    }
    body = {"model": "r1", "max_tokens": 7, "messages": [{"role": "user", "content": "hi"}]}
    assert _request(step, _ex(body))["max_tokens"] == 7, "a default never replaces the client's value"


def test_fallback_group_for_generation_only(step):
    assert _request(step, _ex({"model": "other", "messages": []}))["top_k"] == 20
    assert _request(step, _ex({"model": "other", "prompt": "x"}, "completions", path="completions"))["top_k"] == 20
    body = {"model": "other", "input": "x"}
    assert _request(step, _ex(body, "embeddings", path="embeddings")) == {"model": "other", "input": "x"}
    assert _request(step, _ex({"model": "embed", "input": "x"}, "embeddings", path="embeddings")) == {
        "model": "nomic",
        "input": "x",
        "dimensions": 8,
    }


def test_config_values_are_not_shared_between_requests():
    step = Overrides(parse_llm_params('model=a,stop=["x"]'))
    first = _request(step, _ex({"model": "a"}))
    first["stop"].append("mutated")
    assert _request(step, _ex({"model": "a"}))["stop"] == ["x"]


@pytest.mark.parametrize(
    "messages, expected",
    [
        ([{"role": "user", "content": "q"}], [{"role": "user", "content": "q!"}]),
        (
            [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {}}]}],
            [{"role": "user", "content": [{"type": "text", "text": "a!"}, {"type": "image_url", "image_url": {}}]}],
        ),
        (
            [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}],
            [{"role": "user", "content": [{"type": "image_url", "image_url": {}}, {"type": "text", "text": "!"}]}],
        ),
        ([{"role": "user", "content": None}], [{"role": "user", "content": "!"}]),
        (
            [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
            [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}, {"role": "user", "content": "!"}],
        ),
        ([], [{"role": "user", "content": "!"}]),
    ],
)
def test_append_to_last_user_message(messages, expected):
    body = {"messages": messages}
    append_to_last_user_message(body, "!")
    assert body["messages"] == expected


def test_alias_responses_name_the_client_model(step):
    """Overrides renames the request; ModelName, placed after it, renames the answers back."""
    rename = ModelName()
    ex = _ex({"model": "r1", "messages": [{"role": "user", "content": "hi"}]})
    _request(step, ex)
    assert ex.body["model"] == "deepseek-r1:14b"
    _request(rename, ex)
    assert rename.wants_json(ex)
    assert rename.response_json(ex, {"model": "deepseek-r1:14b", "choices": []})["model"] == "r1"
    event = Event.from_json({"id": "c", "object": "chat.completion.chunk", "model": "deepseek-r1:14b", "choices": []})
    assert [e.json()["model"] for e in rename.stream_event(ex, event)] == ["r1"]
    done = Event.from_data("[DONE]")
    assert list(rename.stream_event(ex, done)) == [done]


def test_no_alias_leaves_responses_alone(step):
    rename = ModelName()
    ex = _ex({"model": "other", "messages": []})
    _request(step, ex)
    _request(rename, ex)
    assert not rename.wants_json(ex)
    event = Event.from_json({"model": "upstream-name", "choices": []})
    raw = event.raw
    assert list(rename.stream_event(ex, event)) == [event] and event.raw == raw


def test_models_list_gains_configured_names_once(step):
    ex = _ex(None, "models", "GET", "models")
    assert step.applies(ex) and step.wants_json(ex)
    upstream = {"object": "list", "data": [{"id": "embed", "object": "model", "created": 1, "owned_by": "x"}]}
    out = step.response_json(ex, upstream)
    assert [m["id"] for m in out["data"]] == ["embed", "r1"]
    assert out["data"][1] == {"id": "r1", "object": "model", "created": 1700000000, "owned_by": "cot-proxy"}
    assert [m["id"] for m in step.response_json(ex, out)["data"]] == ["embed", "r1"], "no duplicates"
    assert not step.applies(_ex(None, "models", "GET", "models/r1"))
    assert not Overrides(parse_llm_params("model=*,top_k=1")).applies(_ex(None, "models", "GET", "models"))

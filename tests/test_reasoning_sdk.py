"""Reasoning handling and LLM_PARAMS through the proxy, read with the real `openai` SDK."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from app import create_app
from app.config import Config
from app.model_params import parse_llm_params
from tests.fakes.openai_upstream import FakeUpstream, chat_chunk, chat_completion, json_reply, sse_reply
from tests.support import LiveServer, proxy_config

MSG = [{"role": "user", "content": "hi"}]
LLM_PARAMS = (
    "model=r1,upstream_model_name=deepseek-r1:14b,temperature=0.6,think_prefilled=true;"
    "model=qwen,top_k=20,default.max_tokens=64,append_to_last_user_message=\\n/no_think"
)
THINK_STREAM = [
    chat_chunk(role="assistant", content=""),
    chat_chunk("<th"),
    chat_chunk("ink>Let me"),
    chat_chunk(" think.</th"),
    chat_chunk("ink>\n\nThe answer"),
    chat_chunk(" is 4."),
    chat_chunk(finish="stop"),
]


def _start(upstream: FakeUpstream, **changes: Any) -> LiveServer:
    return LiveServer(create_app(proxy_config(upstream, llm_params=parse_llm_params(LLM_PARAMS), **changes)))


@pytest.fixture(scope="module")
def strip(_upstream_server: FakeUpstream) -> Iterator[LiveServer]:
    """The defaults (THINK_MODE=strip) plus LLM_PARAMS; one server for the module keeps the tests fast."""
    server = _start(_upstream_server)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def separate(_upstream_server: FakeUpstream) -> Iterator[LiveServer]:
    server = _start(_upstream_server, think_mode="separate")
    yield server
    server.stop()


def _reasoning(obj: Any) -> str | None:
    return (obj.model_extra or {}).get("reasoning_content")


def _read(stream: Any) -> tuple[str, str, list[Any]]:
    chunks = list(stream)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reasoning = "".join(_reasoning(c.choices[0].delta) or "" for c in chunks if c.choices)
    return content, reasoning, chunks


def test_non_streaming_strip_is_the_default(strip, upstream):
    upstream.enqueue(json_reply(chat_completion("<think>2+2...</think>\n\nIt is 4.")))
    out = strip.sdk().chat.completions.create(model="m", messages=MSG)
    assert out.choices[0].message.content == "It is 4."
    assert _reasoning(out.choices[0].message) is None


def test_non_streaming_separate(separate, upstream):
    upstream.enqueue(json_reply(chat_completion("<think>2+2...</think>\n\nIt is 4.")))
    out = separate.sdk().chat.completions.create(model="m", messages=MSG)
    assert out.choices[0].message.content == "It is 4."
    assert _reasoning(out.choices[0].message) == "2+2..."


def test_streaming_strip(strip, upstream):
    upstream.enqueue(sse_reply(THINK_STREAM, splits=[5, 90, 91, 300]))
    content, reasoning, chunks = _read(strip.sdk().chat.completions.create(model="m", messages=MSG, stream=True))
    assert (content, reasoning) == ("The answer is 4.", "")
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[-1].choices[0].finish_reason == "stop"


def test_streaming_separate_with_upstream_reasoning_field(separate, upstream):
    upstream.enqueue(sse_reply([chat_chunk(role="assistant", content="", reasoning="Ollama says "), *THINK_STREAM]))
    sdk = separate.sdk()
    content, reasoning, _ = _read(sdk.chat.completions.create(model="m", messages=MSG, stream=True))
    assert (content, reasoning) == ("The answer is 4.", "Ollama says Let me think.")


def test_alias_override_and_prefilled_reasoning(separate, upstream):
    """r1: sent upstream as deepseek-r1:14b with temperature 0.6; answers name r1; the stream opens inside."""
    events = [
        chat_chunk("Hmm,", role="assistant"),
        chat_chunk(" easy."),
        chat_chunk("</think>"),
        chat_chunk("\n4"),
        chat_chunk(finish="stop"),
    ]
    for e in events:
        e["model"] = "deepseek-r1:14b"
    upstream.enqueue(sse_reply(events))
    sdk = separate.sdk()
    content, reasoning, chunks = _read(
        sdk.chat.completions.create(model="r1", messages=MSG, temperature=1.0, stream=True)
    )
    sent = upstream.last.json()
    assert sent["model"] == "deepseek-r1:14b" and sent["temperature"] == 0.6
    assert (content, reasoning) == ("4", "Hmm, easy.")
    assert {c.model for c in chunks} == {"r1"}
    upstream.enqueue(json_reply(chat_completion("Hmm.</think>4", model="deepseek-r1:14b")))
    out = sdk.chat.completions.create(model="r1", messages=MSG)
    assert out.model == "r1" and out.choices[0].message.content == "4"


def test_weak_default_and_appended_instruction(strip, upstream):
    sdk = strip.sdk()
    sdk.chat.completions.create(model="qwen", messages=MSG, top_p=0.9)
    sent = upstream.last.json()
    assert (sent["model"], sent["top_k"], sent["max_tokens"], sent["top_p"]) == ("qwen", 20, 64, 0.9)
    assert sent["messages"][-1] == {"role": "user", "content": "hi\n/no_think"}
    sdk.chat.completions.create(model="qwen", messages=MSG, max_tokens=5)
    assert upstream.last.json()["max_tokens"] == 5


def test_models_list_adds_configured_names(strip, upstream):
    upstream.enqueue(
        json_reply(
            {
                "object": "list",
                "data": [
                    {"id": "fake-model", "object": "model", "created": 1, "owned_by": "fake"},
                    {"id": "qwen", "object": "model", "created": 1, "owned_by": "fake"},
                ],
            }
        )
    )
    assert [m.id for m in strip.sdk().models.list()] == ["fake-model", "qwen", "r1"]


def test_completions_stream_strip(strip, upstream):
    base = {"id": "cmpl", "object": "text_completion", "created": 1, "model": "m"}
    texts = [("<think>r", None), ("</think> ", None), ("Hi", None), ("", "stop")]
    upstream.enqueue(
        sse_reply(
            [{**base, "choices": [{"index": 0, "text": t, "logprobs": None, "finish_reason": f}]} for t, f in texts]
        )
    )
    stream = strip.sdk().completions.create(model="m", prompt="x", stream=True)
    assert "".join(c.choices[0].text for c in stream) == "Hi"


COT_PROXY_QWEN3 = (
    "model=Qwen3-32B-Non-Thinking,upstream_model_name=Qwen3-32B,temperature=0.7,top_k=20,top_p=0.8,"
    "enable_think_tag_filtering=true,think_tag_start=<think>,think_tag_end=</think>,"
    "append_to_last_user_message=\\n\\n/no_think"
)


def test_cot_proxy_readme_string_works_unchanged(upstream):
    """cot_proxy's README example for Qwen3, read from the environment as cot_proxy read it."""
    config = Config.from_env({"TARGET_BASE_URL": upstream.base_url, "LLM_PARAMS": COT_PROXY_QWEN3})
    server = LiveServer(create_app(config))
    try:
        upstream.enqueue(json_reply(chat_completion("<think>\n\n</think>\n\nHello!", model="Qwen3-32B")))
        out = server.sdk().chat.completions.create(model="Qwen3-32B-Non-Thinking", messages=MSG)
    finally:
        server.stop()
    sent = upstream.last.json()
    assert {k: sent[k] for k in ("model", "temperature", "top_k", "top_p")} == {
        "model": "Qwen3-32B",
        "temperature": 0.7,
        "top_k": 20,
        "top_p": 0.8,
    }
    assert sent["messages"][-1]["content"] == "hi\n\n/no_think"
    assert (out.model, out.choices[0].message.content) == ("Qwen3-32B-Non-Thinking", "Hello!")


def test_retrieve_a_configured_name_in_single_upstream_mode(upstream):
    from app import create_app
    from app.config import Config

    cfg = Config.from_env({"TARGET_BASE_URL": upstream.base_url, "LLM_PARAMS": "model=r1,upstream_model_name=x"})
    resp = create_app(cfg).test_client().get("/v1/models/r1")
    assert resp.status_code == 200 and resp.get_json()["id"] == "r1"
    assert upstream.requests == [], "answered by the proxy"

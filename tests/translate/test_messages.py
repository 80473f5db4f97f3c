"""Anthropic Messages <-> chat completions: the pure conversions, validation, errors and the stream
state machine, checked against the real `anthropic` SDK's own types and accumulator."""

from __future__ import annotations

from typing import Any

import anthropic
import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message

from app.errors import AuthenticationError, InvalidRequest, Overloaded, RateLimited, UpstreamTimeout
from app.translate import messages as m

BASE = {"model": "m", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}


def request(**changes: Any) -> dict[str, Any]:
    return {**BASE, **changes}


# -- request ------------------------------------------------------------------------------------------


def test_system_blocks_and_sampling_params():
    body = request(
        system=[
            {"type": "text", "text": "Be brief."},
            {"type": "text", "text": "Be kind.", "cache_control": {"type": "ephemeral"}},
        ],
        temperature=0.2,
        top_p=0.9,
        top_k=40,
        stop_sequences=["END"],
        metadata={"user_id": "u1"},
    )
    chat = m.to_chat(body)
    assert chat["messages"][0] == {"role": "system", "content": "Be brief.\nBe kind."}
    assert chat["messages"][1] == {"role": "user", "content": "hi"}
    assert (chat["max_tokens"], chat["temperature"], chat["top_p"], chat["top_k"]) == (64, 0.2, 0.9, 40)
    assert chat["stop"] == ["END"]
    assert "metadata" not in chat and "stream" not in chat


def test_stream_asks_for_usage():
    chat = m.to_chat(request(stream=True))
    assert chat["stream"] is True and chat["stream_options"] == {"include_usage": True}


def test_images_base64_and_url():
    body = request(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0K"}},
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
                ],
            }
        ]
    )
    content = m.to_chat(body)["messages"][0]["content"]
    assert content == [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
    ]


def test_tool_use_round_trip_becomes_tool_calls_and_tool_messages():
    body = request(
        tools=[
            {
                "name": "get_weather",
                "description": "Weather by city",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
            {"type": "web_search_20250305", "name": "web_search"},
        ],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "call the tool", "signature": "sig"},
                    {"type": "text", "text": "Let me check."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "18C"}]},
                    {"type": "text", "text": "And tomorrow?"},
                ],
            },
        ],
    )
    chat = m.to_chat(body)
    assert chat["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                "description": "Weather by city",
            },
        }
    ]  # the server tool cannot run on a chat server
    assert chat["tool_choice"] == "required" and chat["parallel_tool_calls"] is False
    assert chat["messages"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "Let me check.",
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
        {"role": "user", "content": "And tomorrow?"},
    ]


@pytest.mark.parametrize(
    "choice, chat",
    [
        ({"type": "auto"}, "auto"),
        ({"type": "any"}, "required"),
        ({"type": "none"}, "none"),
        ({"type": "tool", "name": "f"}, {"type": "function", "function": {"name": "f"}}),
    ],
)
def test_tool_choice(choice, chat):
    body = request(tools=[{"name": "f", "input_schema": {"type": "object"}}], tool_choice=choice)
    assert m.to_chat(body)["tool_choice"] == chat


def test_tool_choice_without_tools_is_dropped():
    assert "tool_choice" not in m.to_chat(request(tool_choice={"type": "auto"}))


def test_two_tool_results_with_images_keep_the_tool_messages_together():
    image = {"type": "image", "source": {"type": "url", "url": "https://x/1.png"}}
    body = request(
        messages=[
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": "a", "name": "shot", "input": {}},
                    {"type": "tool_use", "id": "b", "name": "shot", "input": {}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "a", "content": [image]},
                    {"type": "tool_result", "tool_use_id": "b", "content": [image]},
                    {"type": "text", "text": "Compare them."},
                ],
            },
        ]
    )
    msgs = m.to_chat(body)["messages"]
    assert [x["role"] for x in msgs] == ["assistant", "tool", "tool", "user"]
    assert [p["type"] for p in msgs[3]["content"]] == ["image_url", "image_url", "text"]


def test_tool_result_images_follow_in_a_user_message():
    body = request(
        messages=[
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "shot", "input": {}}]},
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "t1",
                        "content": [
                            {"type": "text", "text": "here"},
                            {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "AAA"}},
                        ],
                    }
                ],
            },
        ]
    )
    msgs = m.to_chat(body)["messages"]
    assert msgs[0] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "shot", "arguments": "{}"}}],
    }
    assert msgs[1] == {"role": "tool", "tool_call_id": "t1", "content": "here"}
    assert msgs[2] == {
        "role": "user",
        "content": [{"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AAA"}}],
    }
    assert len(msgs) == 3


def test_unsupported_blocks_are_400_naming_the_block():
    body = request(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"}}
                ],
            }
        ]
    )
    with pytest.raises(InvalidRequest) as exc:
        m.to_chat(body)
    assert exc.value.param == "messages.0.content.0"
    body = request(messages=[{"role": "user", "content": [{"type": "container_upload", "file_id": "f"}]}])
    with pytest.raises(InvalidRequest) as exc:
        m.to_chat(body)
    assert exc.value.param == "messages.0.content.0.type"


def test_plain_text_document_is_text():
    body = request(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "The doc."}}
                ],
            }
        ]
    )
    assert m.to_chat(body)["messages"][0]["content"] == "The doc."


@pytest.mark.parametrize(
    "body, param",
    [
        ({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
        ({"model": "m", "max_tokens": 0, "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
        (request(messages=[]), "messages"),
        (request(messages=["hi"]), "messages.0"),
        (request(messages=[{"role": "system", "content": "x"}]), "messages.0.role"),
        (request(messages=[{"role": "user", "content": 5}]), "messages.0.content"),
        (request(messages=[{"role": "user", "content": [{"type": "text", "text": 5}]}]), "messages.0.content.0.text"),
        (
            request(messages=[{"role": "user", "content": [{"type": "image", "source": {"type": "file"}}]}]),
            "messages.0.content.0.source.type",
        ),
        (
            request(
                messages=[{"role": "user", "content": [{"type": "tool_use", "id": "a", "name": "f", "input": {}}]}]
            ),
            "messages.0.content.0",
        ),
        (
            request(
                messages=[
                    {"role": "assistant", "content": [{"type": "tool_use", "id": "a", "name": "f", "input": "x"}]}
                ]
            ),
            "messages.0.content.0.input",
        ),
        (
            request(messages=[{"role": "user", "content": [{"type": "tool_result"}]}]),
            "messages.0.content.0.tool_use_id",
        ),
        (request(system=5), "system"),
        (request(system=[{"type": "image"}]), "system.0"),
        (request(temperature="hot"), "temperature"),
        (request(top_k=1.5), "top_k"),
        (request(stream="yes"), "stream"),
        (request(stop_sequences="END"), "stop_sequences"),
        (request(tools=[{"description": "no name"}]), "tools.0"),
        (request(tools=[{"name": "f", "input_schema": "x"}]), "tools.0.input_schema"),
        (request(tool_choice={"type": "sometimes"}), "tool_choice"),
        (request(tool_choice={"type": "tool"}), "tool_choice.name"),
        (request(thinking=True), "thinking"),
    ],
)
def test_validate_names_the_param(body, param):
    with pytest.raises(InvalidRequest) as exc:
        m.validate(body)
    assert exc.value.param == param and exc.value.status == 400


def test_validate_passes_a_full_request():
    m.validate(
        request(
            system="s",
            stream=True,
            thinking={"type": "enabled", "budget_tokens": 1024},
            tools=[{"name": "f", "input_schema": {"type": "object"}}],
            tool_choice={"type": "auto"},
            metadata={"user_id": "x"},
            unknown_field=1,
        )
    )


def test_count_tokens_counts_system_messages_and_tools():
    small = m.count_tokens(request())
    assert small > 0
    assert m.count_tokens(request(system="x" * 400)) == small + 100
    assert m.count_tokens(request(tools=[{"name": "f" * 396, "input_schema": {}}])) > small + 100


# -- response -----------------------------------------------------------------------------------------


def chat_completion(
    message: dict[str, Any], finish: str = "stop", usage: dict[str, Any] | None = None, **choice: Any
) -> dict[str, Any]:
    return {
        "id": "chatcmpl-abc",
        "object": "chat.completion",
        "model": "upstream-name",
        "choices": [{"index": 0, "message": message, "finish_reason": finish, **choice}],
        "usage": usage
        or {
            "prompt_tokens": 20,
            "completion_tokens": 5,
            "total_tokens": 25,
            "prompt_tokens_details": {"cached_tokens": 8},
        },
    }


def test_from_chat_is_a_typed_sdk_message():
    data = chat_completion(
        {
            "role": "assistant",
            "content": "Sunny.",
            "reasoning_content": "Think first.",
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get", "arguments": '{"city": "Paris"}'}}
            ],
        },
        finish="tool_calls",
    )
    out = m.from_chat(data, model="claude-local")
    msg = Message.model_validate(out)
    assert msg.id == "msg_abc" and msg.model == "claude-local" and msg.role == "assistant"
    assert [b.type for b in msg.content] == ["thinking", "text", "tool_use"]
    assert msg.content[0].thinking == "Think first."
    assert msg.content[1].text == "Sunny."
    assert (msg.content[2].id, msg.content[2].name, msg.content[2].input) == ("call_1", "get", {"city": "Paris"})
    assert msg.stop_reason == "tool_use"
    assert (msg.usage.input_tokens, msg.usage.output_tokens, msg.usage.cache_read_input_tokens) == (12, 5, 8)


@pytest.mark.parametrize(
    "finish, reason",
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("content_filter", "refusal"),
        (None, "end_turn"),
    ],
)
def test_stop_reasons(finish, reason):
    out = m.from_chat(chat_completion({"role": "assistant", "content": "x"}, finish=finish), model="m")
    assert out["stop_reason"] == reason and out["stop_sequence"] is None


def test_stop_sequence_when_the_server_names_it():
    data = chat_completion({"role": "assistant", "content": "x"}, stop_reason="END")
    out = m.from_chat(data, model="m", stops=["END"])
    assert (out["stop_reason"], out["stop_sequence"]) == ("stop_sequence", "END")


def test_malformed_tool_arguments_become_an_empty_object():
    data = chat_completion(
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{not json"}}],
        },
        finish="tool_calls",
    )
    assert m.from_chat(data, model="m")["content"] == [{"type": "tool_use", "id": "c", "name": "f", "input": {}}]


def test_no_usage_is_estimated():
    data = chat_completion({"role": "assistant", "content": "x" * 40})
    del data["usage"]
    assert m.from_chat(data, model="m", input_estimate=9)["usage"] == {"input_tokens": 9, "output_tokens": 10}


def test_not_a_chat_completion_is_an_upstream_error():
    with pytest.raises(m.UpstreamBadResponse):
        m.from_chat({"object": "list"}, model="m")


# -- errors -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error, kind",
    [
        (InvalidRequest("bad"), "invalid_request_error"),
        (AuthenticationError("who"), "authentication_error"),
        (RateLimited("slow down"), "rate_limit_error"),
        (Overloaded("busy"), "overloaded_error"),
        (UpstreamTimeout("late"), "api_error"),
    ],
)
def test_error_shape(error, kind):
    assert m.ANTHROPIC_ERRORS.body(error) == {"type": "error", "error": {"type": kind, "message": error.message}}
    raw = m.ANTHROPIC_ERRORS.event(error)
    assert raw.startswith(b"event: error\ndata: {") and raw.endswith(b"\n\n")


def test_upstream_errors_get_anthropic_shape():
    openai_envelope = {"error": {"message": "model not loaded", "type": "invalid_request_error"}}
    assert m.upstream_error(400, openai_envelope) == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "model not loaded"},
    }
    assert m.upstream_error(503, {"detail": "busy"})["error"] == {"type": "overloaded_error", "message": "busy"}
    assert m.upstream_error(500, ["?"])["error"]["message"] == "The upstream answered HTTP 500."
    already = {"type": "error", "error": {"type": "api_error", "message": "x"}}
    assert m.upstream_error(500, already) is already


# -- streams ------------------------------------------------------------------------------------------


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-s",
        "object": "chat.completion.chunk",
        "model": "u",
        "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish, **extra}],
    }


def accumulate(events: list[Any]) -> tuple[list[str], Any]:
    """The SDK's own accumulator over our events: (event names, final typed message)."""
    names, snapshot = [], None
    for event in events:
        names.append(event.name)
        if event.name == "ping":
            continue
        snapshot = accumulate_event(event=event.json(), current_snapshot=snapshot)
    return names, snapshot


def run(chunks: list[dict[str, Any]], chat_usage: Any = None, **kw: Any) -> tuple[list[str], Any]:
    stream = m.MessageStream(model="claude-local", **kw)
    events = [e for c in chunks for e in stream.feed(c)] + stream.end(chat_usage)
    return accumulate(events)


def test_stream_thinking_text_and_tools_accumulate_in_the_sdk():
    chunks = [
        chunk({"role": "assistant", "content": ""}),
        chunk({"reasoning_content": "Let me "}),
        chunk({"reasoning_content": "see."}),
        chunk({"content": "It is "}),
        chunk({"content": "sunny."}),
        chunk(
            {
                "tool_calls": [
                    {"index": 0, "id": "call_a", "type": "function", "function": {"name": "get", "arguments": ""}}
                ]
            }
        ),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
        chunk(
            {
                "tool_calls": [
                    {"index": 1, "id": "call_b", "type": "function", "function": {"name": "time", "arguments": "{}"}}
                ]
            }
        ),
        chunk(finish="tool_calls"),
        {"id": "chatcmpl-s", "choices": [], "usage": {"prompt_tokens": 30, "completion_tokens": 12}},
    ]
    names, msg = run(chunks[:-1], chunks[-1]["usage"])
    assert names == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    final = Message.model_validate(msg.to_dict())
    assert [b.type for b in final.content] == ["thinking", "text", "tool_use", "tool_use"]
    assert final.content[0].thinking == "Let me see."
    assert final.content[1].text == "It is sunny."
    assert (final.content[2].name, final.content[2].input) == ("get", {"city": "Paris"})
    assert (final.content[3].id, final.content[3].input) == ("call_b", {})
    assert final.stop_reason == "tool_use" and final.id == "msg_s" and final.model == "claude-local"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (30, 12)


def test_stream_malformed_arguments_still_parse_in_the_sdk():
    chunks = [
        chunk({"tool_calls": [{"index": 0, "id": "c", "function": {"name": "f", "arguments": "{oops"}}]}),
        chunk(finish="tool_calls"),
    ]
    _, msg = run(chunks)
    assert msg.content[0].input == {}


def test_stream_without_usage_estimates_and_without_finish_ends_the_turn():
    _, msg = run([chunk({"content": "x" * 8})], None, input_estimate=7)
    assert msg.stop_reason == "end_turn"
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (7, 2)


def test_stream_stop_sequence_and_length():
    _, msg = run([chunk({"content": "a"}), chunk(finish="stop", stop_reason="###")], stops=("###",))
    assert (msg.stop_reason, msg.stop_sequence) == ("stop_sequence", "###")
    _, msg = run([chunk({"content": "a"}), chunk(finish="length")])
    assert msg.stop_reason == "max_tokens"


def test_empty_upstream_stream_is_still_a_whole_message():
    names, msg = run([])
    assert names == ["message_start", "ping", "message_delta", "message_stop"]
    assert msg.content == []


def test_message_start_carries_the_prompt_estimate():
    stream = m.MessageStream(model="m", input_estimate=42)
    start = stream.feed(chunk({"role": "assistant", "content": ""}))[0]
    assert start.name == "message_start" and start.json()["message"]["usage"] == {
        "input_tokens": 42,
        "output_tokens": 0,
    }
    _, msg = accumulate([start, *stream.end({"prompt_tokens": 50, "completion_tokens": 1})])
    assert msg.usage.input_tokens == 50  # the real count replaces the estimate


def test_end_is_once_and_feed_after_end_is_ignored():
    stream = m.MessageStream(model="m")
    stream.feed(chunk({"content": "a"}))
    assert stream.end(None)
    assert stream.end(None) == [] and stream.feed(chunk({"content": "b"})) == []


def test_sdk_exception_types_exist():  # the names the Gunicorn tests rely on
    assert issubclass(anthropic.RateLimitError, anthropic.APIStatusError)

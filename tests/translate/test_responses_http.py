"""`/v1/responses` over a chat-only upstream, through the Flask test client (real HTTP to the fake)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.fakes.chat_only_upstream import ChatAnswer, ChatOnlyUpstream, ToolCall
from tests.fakes.openai_upstream import chat_chunk, json_reply, sse_reply

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def events_of(body: bytes) -> list[dict[str, Any]]:
    """The data of every SSE event, checking each `event:` line names the data's type."""
    out = []
    blocks = [b for b in body.decode().split("\n\n") if b.strip()]
    if blocks and blocks[-1] == "data: [DONE]":
        blocks.pop()  # the relay still ends every stream with it; the openai SDK stops there
    for block in blocks:
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        data = json.loads(lines["data"])
        if "type" in data:
            assert lines.get("event") == data["type"], block
        out.append(data)
    return out


def create(client, **body: Any):
    body.setdefault("model", "m")
    return client.post("/v1/responses", json=body)


def test_string_input_non_streamed(make_client, chat_only: ChatOnlyUpstream):
    chat_only.answer(ChatAnswer(text="Bonjour!", prompt_tokens=20, completion_tokens=5, cached_tokens=8))
    client = make_client(RESPONSES_API="translate")
    r = create(
        client, input="Say hi in French", instructions="Be brief.", max_output_tokens=50, temperature=0.2, top_p=0.9
    )
    assert r.status_code == 200, r.get_data()
    data = r.get_json()
    assert data["object"] == "response" and data["status"] == "completed" and data["id"].startswith("resp_")
    assert data["model"] == "m" and data["instructions"] == "Be brief."
    [message] = data["output"]
    assert message["type"] == "message" and message["role"] == "assistant"
    assert message["content"][0] == {"type": "output_text", "text": "Bonjour!", "annotations": [], "logprobs": []}
    assert data["usage"] == {
        "input_tokens": 20,
        "input_tokens_details": {"cached_tokens": 8},
        "output_tokens": 5,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 25,
    }
    [sent] = chat_only.chat_bodies()
    assert sent == {
        "model": "m",
        "max_tokens": 50,
        "temperature": 0.2,
        "top_p": 0.9,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi in French"}],
    }
    assert not chat_only.missing_hits()


def test_items_become_chat_messages(make_client, chat_only):
    client = make_client(RESPONSES_API="translate")
    r = create(
        client,
        input=[
            {"role": "developer", "content": "Use tools."},
            {
                "type": "message",
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "What is here? "},
                    {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "low"},
                ],
            },
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
            {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
            {"type": "function_call", "call_id": "call_2", "name": "get_weather", "arguments": '{"city":"Rome"}'},
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
            {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "rain"}]},
            {"type": "reasoning", "id": "rs_1", "summary": []},
        ],
        tools=[WEATHER],
        tool_choice={"type": "function", "name": "get_weather"},
        parallel_tool_calls=True,
    )
    assert r.status_code == 200, r.get_data()
    [sent] = chat_only.chat_bodies()
    assert sent["messages"] == [
        {"role": "system", "content": "Use tools."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is here? "},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
            ],
        },
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": "rain"},
    ]
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather of a city",
                "parameters": WEATHER["parameters"],
            },
        }
    ]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert sent["parallel_tool_calls"] is True


def test_tool_call_answer(make_client, chat_only):
    chat_only.answer(
        ChatAnswer(
            text=None, tool_calls=[ToolCall("get_weather", '{"city": "Paris"}', id="call_9")], finish="tool_calls"
        )
    )
    client = make_client(RESPONSES_API="translate")
    data = create(client, input="Weather in Paris?", tools=[WEATHER]).get_json()
    [call] = data["output"]
    assert call["type"] == "function_call" and call["call_id"] == "call_9" and call["name"] == "get_weather"
    assert json.loads(call["arguments"]) == {"city": "Paris"} and call["status"] == "completed"
    assert data["tools"] == [WEATHER]


@pytest.mark.parametrize("mode, expect", [("separate", True), ("strip", False)])
def test_reasoning_follows_think_mode(make_client, chat_only, mode, expect):
    chat_only.answer(ChatAnswer(text="42", reasoning="Six times seven.", reasoning_as="think"))
    client = make_client(RESPONSES_API="translate", THINK_MODE=mode)
    data = create(client, input="Answer?").get_json()
    kinds = [o["type"] for o in data["output"]]
    if expect:
        assert kinds == ["reasoning", "message"]
        assert data["output"][0]["content"] == [{"type": "reasoning_text", "text": "Six times seven."}]
    else:
        assert kinds == ["message"]
    assert data["output"][-1]["content"][0]["text"] == "42"


def test_length_is_incomplete(make_client, chat_only):
    chat_only.answer(ChatAnswer(text="Once upon", finish="length"))
    data = create(make_client(RESPONSES_API="translate"), input="Tell a story", max_output_tokens=2).get_json()
    assert data["status"] == "incomplete" and data["incomplete_details"] == {"reason": "max_output_tokens"}


def test_stream_event_sequence(make_client, chat_only):
    chat_only.answer(
        ChatAnswer(
            text="Hello there",
            reasoning="Greet.",
            cached_tokens=3,
            tool_calls=[ToolCall("get_weather", '{"city": "Oslo"}')],
            finish="tool_calls",
        )
    )
    client = make_client(RESPONSES_API="translate", THINK_MODE="separate")
    r = create(client, input="hi", tools=[WEATHER], stream=True)
    assert r.status_code == 200 and r.mimetype == "text/event-stream"
    events = events_of(r.get_data())
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    types = [e["type"] for e in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] == "response.completed"
    # Each item: added, its deltas (runs collapsed here), done; in output order.
    runs = [t for i, t in enumerate(types) if i == 0 or t != types[i - 1] or not t.endswith(".delta")]
    assert runs[2:] == [
        "response.output_item.added",
        "response.content_part.added",
        "response.reasoning_text.delta",
        "response.reasoning_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    final = events[-1]["response"]
    assert [o["type"] for o in final["output"]] == ["reasoning", "message", "function_call"]
    assert final["output"][1]["content"][0]["text"] == "Hello there"
    assert final["usage"]["input_tokens_details"]["cached_tokens"] == 3
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text == "Hello there"
    assert chat_only.chat_bodies()[0]["stream_options"] == {"include_usage": True}


def test_store_previous_response_and_retrieve(make_client, chat_only):
    client = make_client(RESPONSES_API="translate")
    chat_only.answer(ChatAnswer(text="My name is Bot."), ChatAnswer(text="You asked my name."))
    first = create(client, input="What is your name?", instructions="Be kind.").get_json()
    second = create(client, input="What did I ask?", previous_response_id=first["id"]).get_json()
    assert second["previous_response_id"] == first["id"]
    sent = chat_only.chat_bodies()[1]["messages"]
    assert sent == [
        {"role": "user", "content": "What is your name?"},
        {"role": "assistant", "content": "My name is Bot."},
        {"role": "user", "content": "What did I ask?"},
    ]  # instructions do not carry over
    got = client.get(f"/v1/responses/{first['id']}")
    assert got.status_code == 200 and got.get_json() == first
    gone = client.delete(f"/v1/responses/{first['id']}")
    assert gone.get_json() == {"id": first["id"], "object": "response", "deleted": True}
    # Now unknown here: the upstream is asked, and it does not know the route.
    assert client.get(f"/v1/responses/{first['id']}").status_code == 404
    r = create(client, input="again", previous_response_id=first["id"])
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "previous_response_not_found"


def test_store_false_is_not_kept(make_client, chat_only):
    client = make_client(RESPONSES_API="translate")
    data = create(client, input="hi", store=False).get_json()
    assert data["store"] is False
    assert client.get(f"/v1/responses/{data['id']}").status_code == 404


def test_auto_switches_after_404_and_remembers(make_client, chat_only):
    client = make_client()  # auto is the default
    assert create(client, input="one").status_code == 200
    assert [r.path for r in chat_only.requests] == ["/v1/responses", "/v1/chat/completions"]
    assert create(client, input="two").status_code == 200
    assert [r.path for r in chat_only.requests][2:] == ["/v1/chat/completions"]


def test_auto_on_405(make_client):
    upstream = ChatOnlyUpstream(missing_status=405).start()
    try:
        from app import create_app
        from tests.translate.conftest import config_for

        client = create_app(config_for(upstream)).test_client()
        assert create(client, input="one").get_json()["status"] == "completed"
        assert [r.path for r in upstream.requests] == ["/v1/responses", "/v1/chat/completions"]
    finally:
        upstream.stop()


def test_passthrough_mode_relays_the_404(make_client, chat_only):
    r = create(make_client(RESPONSES_API="passthrough"), input="one")
    assert r.status_code == 404
    assert [x.path for x in chat_only.requests] == ["/v1/responses"]


@pytest.mark.parametrize("mode", ["passthrough", "auto"])
def test_passthrough_is_byte_identical(make_client, chat_only, mode):
    """An upstream that speaks /v1/responses: its answer reaches the client byte for byte."""
    native = {"id": "resp_native", "object": "response", "status": "completed", "output": [], "x": [1, 2.50]}
    chat_only.enqueue(json_reply(native))
    client = make_client(RESPONSES_API=mode)
    r = create(client, input="hi", tools=[{"type": "web_search"}], include=["reasoning.encrypted_content"])
    assert r.get_data() == json.dumps(native).encode()
    sent = chat_only.last
    assert sent.path == "/v1/responses"
    assert sent.json() == {
        "model": "m",
        "input": "hi",
        "tools": [{"type": "web_search"}],
        "include": ["reasoning.encrypted_content"],
    }
    raw_events = [
        b'event: response.created\ndata: {"type":"response.created","sequence_number":0}\n\n',
        b'event: response.completed\ndata: {"type":"response.completed",  "sequence_number":1}\n\n',
    ]
    chat_only.enqueue(sse_reply(raw_events, done=False))
    r = create(client, input="hi", stream=True)
    assert r.get_data() == b"".join(raw_events)


def test_non_json_body_passes_through(make_client, chat_only):
    client = make_client(RESPONSES_API="translate")
    r = client.post("/v1/responses", data=b'{"input": "hi"}', content_type="text/plain")
    assert r.status_code == 404  # relayed untouched, as before: the chat-only upstream does not know the route
    assert chat_only.last.path == "/v1/responses" and chat_only.last.body == b'{"input": "hi"}'


HOSTILE = [
    ({"input": 5}, "input"),
    ({"input": [1, 2]}, "input[0]"),
    ({"input": "x", "instructions": ["a"]}, "instructions"),
    ({"input": "x", "temperature": "hot"}, "temperature"),
    ({"input": "x", "max_output_tokens": -1}, "max_output_tokens"),
    ({"input": "x", "max_output_tokens": True}, "max_output_tokens"),
    ({"input": "x", "stream": "yes"}, "stream"),
    ({"input": "x", "tools": {"a": 1}}, "tools"),
    ({"input": "x", "model": 7}, "model"),
    ({"input": "x", "previous_response_id": 3}, "previous_response_id"),
    ({"input": "x", "text": "json"}, "text"),
]
TRANSLATION_ONLY = [
    ({"input": "x", "tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"input": "x", "tools": [{"type": "function"}]}, "tools[0].name"),
    ({"input": "x", "tools": ["f"]}, "tools[0]"),
    ({"input": "x", "tool_choice": {"type": "file_search"}}, "tool_choice"),
    ({"input": [{"type": "message", "role": "robot", "content": "x"}]}, "input[0].role"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}, "input[0].content[0].type"),
    (
        {"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
        "input[0].content[0].image_url",
    ),
    ({"input": [{"role": "user", "content": 5}]}, "input[0].content"),
    ({"input": [{"role": "user", "content": ["x"]}]}, "input[0].content[0]"),
    ({"input": [{"type": "function_call", "name": "f", "arguments": {}}]}, "input[0].call_id"),
    ({"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": {}}]}, "input[0].arguments"),
    ({"input": [{"type": "function_call_output", "call_id": "c", "output": 5}]}, "input[0].output"),
    ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0].type"),
    ({"input": []}, "input"),
    ({}, "input"),
    ({"input": "x", "background": True}, "background"),
    ({"input": "x", "text": {"format": {"type": "grammar"}}}, "text.format.type"),
]


@pytest.mark.parametrize("body, param", HOSTILE + TRANSLATION_ONLY)
def test_bad_input_is_400_naming_the_field(make_client, chat_only, body, param):
    r = client_post = make_client(RESPONSES_API="translate").post("/v1/responses", json={"model": "m", **body})
    assert client_post.status_code == 400, r.get_data()
    err = r.get_json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param, err
    assert not chat_only.chat_bodies()


@pytest.mark.parametrize("body, param", HOSTILE)
def test_bad_types_are_400_in_passthrough_too(make_client, chat_only, body, param):
    r = make_client(RESPONSES_API="passthrough").post("/v1/responses", json={"model": "m", **body})
    assert r.status_code == 400 and r.get_json()["error"]["param"] == param
    assert not chat_only.requests


def test_huge_and_deep_input_is_400(make_client, chat_only):
    client = make_client(RESPONSES_API="translate")
    deep: Any = "x"
    for _ in range(200):
        deep = [deep]
    r = client.post("/v1/responses", json={"model": "m", "input": deep})
    assert r.status_code == 400
    many = [{"role": "user", "content": "x"}] * 10_001
    r = client.post("/v1/responses", json={"model": "m", "input": many})
    assert r.status_code == 400 and r.get_json()["error"]["param"] == "input"
    assert not chat_only.requests


def test_stream_broken_off_ends_failed(make_client, chat_only):
    """The upstream drops mid-answer: open items end incomplete, response.failed, then the error event."""
    chunks = [chat_chunk(role="assistant", content=""), chat_chunk("Half an"), chat_chunk(" answer")]
    chat_only.enqueue(sse_reply(chunks, done=False, drop_after=2))
    r = create(make_client(RESPONSES_API="translate"), input="hi", stream=True)
    events = events_of(r.get_data())
    types = [e.get("type") for e in events]
    assert types[:2] == ["response.created", "response.in_progress"] and "response.completed" not in types
    failed = next(e for e in events if e.get("type") == "response.failed")
    assert failed["response"]["status"] == "failed" and failed["response"]["error"]["message"]
    assert [o["status"] for o in failed["response"]["output"]] == ["incomplete"]
    last = events[-1]  # the relay's in-band error, last, in the Responses API's shape
    assert last["type"] == "error" and last["code"] == "upstream_bad_response" and last["message"]
    assert last["error"]["type"] == "upstream_error"  # the envelope too: the openai SDK raises APIError on it


def test_upstream_error_chunk_in_stream(make_client, chat_only):
    err = {"error": {"message": "model overloaded", "type": "server_error", "param": None, "code": None}}
    chat_only.enqueue(sse_reply([chat_chunk(role="assistant", content=""), chat_chunk("x"), err]))
    events = events_of(create(make_client(RESPONSES_API="translate"), input="hi", stream=True).get_data())
    failed = next(e for e in events if e.get("type") == "response.failed")
    assert failed["response"]["error"]["message"] == "model overloaded"
    assert events[-1] == err and "response.completed" not in [e.get("type") for e in events]


@pytest.mark.parametrize("stream", [False, True])
def test_upstream_error_status_passes_in_openai_shape(make_client, chat_only, stream):
    chat_only.answer(
        ChatAnswer(
            status=400,
            error={
                "error": {"message": "context too long", "type": "invalid_request_error", "param": None, "code": None}
            },
        )
    )
    r = create(make_client(RESPONSES_API="translate"), input="hi", stream=stream)
    assert r.status_code == 400 and r.get_json()["error"]["message"] == "context too long"


ODD_CHUNKS = [
    {"choices": [{"index": 0, "delta": {"tool_calls": 5}, "finish_reason": None}]},
    {"choices": [{"index": 0, "delta": {"tool_calls": ["x", {"index": [1], "function": "f"}]}}]},
    {"choices": [{"index": 0, "delta": "text", "finish_reason": None}]},
    {"choices": ["x", 1]},
    {"choices": [{"index": 1, "delta": {"content": "other choice"}}]},
    {"choices": [{"index": 0, "delta": {"content": 7, "reasoning_content": ["r"]}}]},
    {"choices": [{"index": 0, "delta": {"content": "kept"}, "finish_reason": ["stop"]}]},
]


@pytest.mark.parametrize("stream", [False, True])
def test_odd_upstream_answers_are_not_a_500(make_client, chat_only, stream):
    """A chat server's malformed fields are skipped, not fatal."""
    if stream:
        chat_only.enqueue(sse_reply(ODD_CHUNKS))
    else:
        chat_only.enqueue(
            json_reply(
                {
                    "choices": [
                        {
                            "index": 0,
                            "message": {"content": "kept", "tool_calls": 5, "reasoning_content": 3},
                            "finish_reason": None,
                        }
                    ],
                    "usage": "lots",
                }
            )
        )
    r = create(make_client(RESPONSES_API="translate"), input="hi", stream=stream)
    assert r.status_code == 200
    if stream:
        events = events_of(r.get_data())
        assert events[-1]["type"] == "response.completed"
        assert events[-1]["response"]["output"][0]["content"][0]["text"] == "kept"
    else:
        data = r.get_json()
        assert data["output"][0]["content"][0]["text"] == "kept" and data["usage"] is None


PATCH_TOOL = {
    "type": "custom",
    "name": "apply_patch",
    "description": "Edit files.",
    "format": {"type": "grammar", "syntax": "lark", "definition": 'start: "*** Begin Patch" ...'},
}
PATCH = "*** Begin Patch\n*** Add File: a.txt\n+hi\n*** End Patch"


@pytest.mark.parametrize("stream", [False, True])
def test_custom_tool_round_trip(make_client, chat_only, stream):
    """Codex's freeform tools: a function taking one string over chat, `custom_tool_call` items back."""
    chat_only.answer(
        ChatAnswer(
            text=None,
            tool_calls=[ToolCall("apply_patch", json.dumps({"input": PATCH}), id="call_p")],
            finish="tool_calls",
        )
    )
    client = make_client(RESPONSES_API="translate")
    r = create(
        client,
        input="Add a.txt",
        tools=[PATCH_TOOL, WEATHER],
        tool_choice={"type": "custom", "name": "apply_patch"},
        stream=stream,
    )
    sent = chat_only.chat_bodies()[0]
    function = sent["tools"][0]["function"]
    assert function["name"] == "apply_patch" and function["parameters"]["required"] == ["input"]
    assert function["description"].startswith("Edit files.") and "lark grammar" in function["description"]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "apply_patch"}}
    if stream:
        events = events_of(r.get_data())
        types = [e["type"] for e in events]
        assert "response.function_call_arguments.delta" not in types
        assert [e["input"] for e in events if e["type"] == "response.custom_tool_call_input.done"] == [PATCH]
        data = events[-1]["response"]
    else:
        data = r.get_json()
    [call] = data["output"]
    assert call == {
        "type": "custom_tool_call",
        "id": call["id"],
        "call_id": "call_p",
        "name": "apply_patch",
        "input": PATCH,
        "status": "completed",
    }
    # The client runs it and sends the output back, with the call itself (no previous_response_id).
    r = create(
        client,
        input=[
            {"role": "user", "content": "Add a.txt"},
            {"type": "custom_tool_call", "call_id": "call_p", "name": "apply_patch", "input": PATCH},
            {"type": "custom_tool_call_output", "call_id": "call_p", "output": "Done!"},
        ],
        tools=[PATCH_TOOL],
    )
    assert r.status_code == 200
    messages = chat_only.chat_bodies()[1]["messages"]
    assert messages[1]["tool_calls"][0]["function"] == {
        "name": "apply_patch",
        "arguments": json.dumps({"input": PATCH}, separators=(",", ":")),
    }
    assert messages[2] == {"role": "tool", "tool_call_id": "call_p", "content": "Done!"}


def test_custom_tool_with_arguments_not_wrapped(make_client, chat_only):
    """A model that writes the input itself instead of `{"input": ...}`: kept as written."""
    chat_only.answer(ChatAnswer(text=None, tool_calls=[ToolCall("apply_patch", PATCH)], finish="tool_calls"))
    data = create(make_client(RESPONSES_API="translate"), input="x", tools=[PATCH_TOOL]).get_json()
    assert data["output"][0]["input"] == PATCH


def test_a_key_with_a_model_list_reads_its_stored_responses(make_client, chat_only, tmp_path):
    """GET and DELETE name no model: a key limited to some models may still use them."""
    from app.access.store import KeyStore

    url = f"sqlite:///{tmp_path / 'keys.db'}"
    store = KeyStore(url)
    try:
        secret, _ = store.create("limited", models=["m"])
    finally:
        store.close()
    client = make_client(RESPONSES_API="translate", VIRTUAL_KEYS="true", DATABASE_URL=url)
    auth = {"Authorization": f"Bearer {secret}"}
    made = client.post("/v1/responses", json={"model": "m", "input": "hi"}, headers=auth)
    assert made.status_code == 200
    assert client.post("/v1/responses", json={"model": "other", "input": "hi"}, headers=auth).status_code == 403
    rid = made.get_json()["id"]
    assert client.get(f"/v1/responses/{rid}", headers=auth).get_json()["id"] == rid
    assert client.get(f"/v1/responses/{rid}").status_code == 401
    assert client.delete(f"/v1/responses/{rid}", headers=auth).get_json()["deleted"] is True


def test_text_after_a_tool_call_keeps_output_order(make_client, chat_only):
    call = {"index": 0, "id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    chat_only.enqueue(
        sse_reply(
            [
                chat_chunk(role="assistant", content=""),
                chat_chunk(tool_calls=[call]),
                chat_chunk("and some text"),
                chat_chunk(finish="tool_calls"),
            ]
        )
    )
    events = events_of(
        create(make_client(RESPONSES_API="translate"), input="x", tools=[WEATHER], stream=True).get_data()
    )
    added = [(e["output_index"], e["item"]["type"]) for e in events if e["type"] == "response.output_item.added"]
    assert added == [(0, "function_call"), (1, "message")]
    assert [o["type"] for o in events[-1]["response"]["output"]] == ["function_call", "message"]

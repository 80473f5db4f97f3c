"""`/v1/messages` through the whole app (Flask test client) against real fake upstreams on 127.0.0.1:
translation over the chat-only fake, `auto` probing and its memory, byte-identical passthrough to an
upstream that speaks Messages, thinking under each think mode, Anthropic-shaped errors, x-api-key."""

from __future__ import annotations

import json
from typing import Any

import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message

from app import create_app
from app.config import Config
from tests.fakes.chat_only_upstream import ChatAnswer, ChatOnlyUpstream, ToolCall
from tests.fakes.openai_upstream import FakeUpstream, Reply, json_reply

BODY = {"model": "claude-local", "max_tokens": 100, "messages": [{"role": "user", "content": "Weather in Paris?"}]}
TOKEN = "tok-messages-0123456789"


def events_of(raw: str) -> list[tuple[str, Any]]:
    """(event name, data) of every SSE event, in order."""
    out = []
    for block in raw.split("\n\n"):
        name, data = None, None
        for line in block.splitlines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
        if data is not None:
            out.append((name, json.loads(data) if data.startswith("{") else data))
    return out


def accumulated(raw: str) -> Message:
    """The SDK's own accumulator over the stream, as its typed final message."""
    snapshot = None
    for name, data in events_of(raw):
        if name not in (None, "ping"):
            snapshot = accumulate_event(event=data, current_snapshot=snapshot)
    return Message.model_validate(snapshot.to_dict())


def anthropic_error(resp, status: int, kind: str) -> str:
    assert resp.status_code == status, resp.get_data(as_text=True)
    body = resp.get_json()
    assert body["type"] == "error" and body["error"]["type"] == kind, body
    assert set(body["error"]) == {"type", "message"}
    return body["error"]["message"]


# -- translation ----------------------------------------------------------------------------------------


def test_translate_sends_chat_and_answers_a_message(make_client, chat_only):
    client = make_client(MESSAGES_API="translate")
    chat_only.answer(ChatAnswer(text="Sunny, 18C.", prompt_tokens=30, completion_tokens=6, cached_tokens=10))
    resp = client.post(
        "/v1/messages",
        json={
            **BODY,
            "system": "Be brief.",
            "temperature": 0.5,
            "stop_sequences": ["END"],
            "metadata": {"user_id": "u"},
        },
        headers={"anthropic-version": "2023-06-01"},
    )
    assert resp.status_code == 200
    msg = Message.model_validate(resp.get_json())
    assert msg.content[0].text == "Sunny, 18C." and msg.stop_reason == "end_turn" and msg.model == "claude-local"
    assert (msg.usage.input_tokens, msg.usage.output_tokens, msg.usage.cache_read_input_tokens) == (20, 6, 10)
    assert [r.path for r in chat_only.requests] == ["/v1/chat/completions"]  # translate: no probe
    sent = chat_only.chat_bodies()[0]
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
    ]
    assert (sent["max_tokens"], sent["temperature"], sent["stop"]) == (100, 0.5, ["END"])
    assert "anthropic-version" not in chat_only.requests[0].headers


def test_stream_event_sequence_and_sdk_accumulation(make_client, chat_only):
    client = make_client(MESSAGES_API="translate")
    chat_only.answer(
        ChatAnswer(
            text="It is sunny.",
            tool_calls=[ToolCall("get_weather", '{"city": "Paris"}')],
            finish="tool_calls",
            prompt_tokens=40,
            completion_tokens=9,
        )
    )
    resp = client.post(
        "/v1/messages",
        json={**BODY, "stream": True, "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}]},
    )
    assert resp.status_code == 200 and resp.mimetype == "text/event-stream"
    raw = resp.get_data(as_text=True)
    names = [n for n, _ in events_of(raw) if n is not None]
    assert names[:2] == ["message_start", "ping"] and names[-2:] == ["message_delta", "message_stop"]
    assert names.count("content_block_start") == names.count("content_block_stop") == 2
    msg = accumulated(raw)
    assert [b.type for b in msg.content] == ["text", "tool_use"]
    assert msg.content[0].text == "It is sunny."
    assert (msg.content[1].name, msg.content[1].input) == ("get_weather", {"city": "Paris"})
    assert msg.stop_reason == "tool_use" and (msg.usage.input_tokens, msg.usage.output_tokens) == (40, 9)
    sent = chat_only.chat_bodies()[0]
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert sent["tools"][0]["function"]["name"] == "get_weather"


def test_tool_result_round_trip(make_client, chat_only):
    client = make_client(MESSAGES_API="translate")
    chat_only.answer(ChatAnswer(text="18C in Paris."))
    body = {
        **BODY,
        "messages": [
            BODY["messages"][0],
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "call_0", "name": "get_weather", "input": {"city": "Paris"}}],
            },
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_0", "content": "18C"}]},
        ],
    }
    assert client.post("/v1/messages", json=body).get_json()["content"][0]["text"] == "18C in Paris."
    sent = chat_only.chat_bodies()[0]["messages"]
    assert sent[1]["tool_calls"][0]["id"] == "call_0" and sent[2] == {
        "role": "tool",
        "tool_call_id": "call_0",
        "content": "18C",
    }


# -- auto: probe once per backend ------------------------------------------------------------------------


@pytest.mark.parametrize("missing", [404, 405])
def test_auto_probes_once_then_remembers(missing):
    fake = ChatOnlyUpstream(missing_status=missing).start()
    try:
        client = create_app(Config.from_env({"TARGET_BASE_URL": fake.base_url})).test_client()
        for _ in range(3):
            resp = client.post("/v1/messages", json=BODY)
            assert resp.status_code == 200 and resp.get_json()["type"] == "message"
        assert [r.path for r in fake.requests] == ["/v1/messages"] + ["/v1/chat/completions"] * 3
        resp = client.post("/v1/messages", json={**BODY, "stream": True})
        assert accumulated(resp.get_data(as_text=True)).content[0].text == "Hello from upstream"
    finally:
        fake.stop()


# -- passthrough: byte-identical ---------------------------------------------------------------------------


ANTHROPIC_ANSWER = (
    b'{"id":"msg_up","type":"message","role":"assistant","model":"claude-up",  "content":'
    b'[{"type":"text","text":"native"}],"stop_reason":"end_turn","stop_sequence":null,'
    b'"usage":{"input_tokens":3,"output_tokens":1}}'
)
ANTHROPIC_STREAM = (
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_up","type":"message",'
    b'"role":"assistant","model":"claude-up","content":[],"stop_reason":null,"stop_sequence":null,'
    b'"usage":{"input_tokens":3,"output_tokens":0}}}\n\n'
    b'event: ping\ndata: {"type": "ping"}\n\n'
    b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
)


@pytest.mark.parametrize("mode", ["auto", "passthrough"])
def test_passthrough_is_byte_identical(upstream: FakeUpstream, mode):
    client = create_app(Config.from_env({"TARGET_BASE_URL": upstream.base_url, "MESSAGES_API": mode})).test_client()
    upstream.enqueue(
        Reply(headers={"Content-Type": "application/json"}, parts=[ANTHROPIC_ANSWER], chunked=False),
        Reply(headers={"Content-Type": "text/event-stream"}, parts=[ANTHROPIC_STREAM]),
    )
    resp = client.post("/v1/messages", json=BODY, headers={"x-api-key": "sk-ant-client", "anthropic-version": "v"})
    assert resp.status_code == 200 and resp.get_data() == ANTHROPIC_ANSWER
    resp = client.post("/v1/messages", json={**BODY, "stream": True})
    assert resp.get_data() == ANTHROPIC_STREAM
    assert [r.path for r in upstream.requests] == ["/v1/messages", "/v1/messages"]
    first = upstream.requests[0]
    assert first.json() == BODY  # the request as the client sent it
    # Auth is off: the client's own key and headers are for the upstream, as on every route.
    assert first.headers["x-api-key"] == "sk-ant-client" and first.headers["anthropic-version"] == "v"


def test_passthrough_keeps_the_upstream_error_body(upstream: FakeUpstream):
    client = create_app(
        Config.from_env({"TARGET_BASE_URL": upstream.base_url, "MESSAGES_API": "passthrough"})
    ).test_client()
    native = {"type": "error", "error": {"type": "not_found_error", "message": "model: claude-x"}}
    upstream.enqueue(json_reply(native, status=404))
    resp = client.post("/v1/messages", json=BODY)
    assert resp.status_code == 404 and resp.get_json() == native
    assert len(upstream.requests) == 1  # passthrough: a 404 is the answer, never a translation


def test_auto_learns_passthrough_from_a_success(upstream: FakeUpstream):
    client = create_app(Config.from_env({"TARGET_BASE_URL": upstream.base_url})).test_client()
    for _ in range(2):
        upstream.enqueue(Reply(headers={"Content-Type": "application/json"}, parts=[ANTHROPIC_ANSWER], chunked=False))
        assert client.post("/v1/messages", json=BODY).get_data() == ANTHROPIC_ANSWER
    assert [r.path for r in upstream.requests] == ["/v1/messages", "/v1/messages"]


# -- thinking ------------------------------------------------------------------------------------------------


THINKING = {"type": "enabled", "budget_tokens": 1024}


@pytest.mark.parametrize(
    "think_mode, thinking, reasoning_as, shown",
    [
        ("strip", THINKING, "field", True),  # asked for: separated although the think mode strips
        ("strip", THINKING, "think", True),  # <think> text too
        ("strip", None, "field", False),  # not asked for: the configured mode (strip) holds
        ("separate", None, "think", True),  # separate: reasoning is shown as thinking blocks
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_thinking_blocks(make_client, chat_only, think_mode, thinking, reasoning_as, shown, stream):
    client = make_client(MESSAGES_API="translate", THINK_MODE=think_mode)
    chat_only.answer(ChatAnswer(text="Answer.", reasoning="Step by step.", reasoning_as=reasoning_as))
    body = {**BODY, "stream": stream, **({"thinking": thinking} if thinking else {})}
    resp = client.post("/v1/messages", json=body)
    assert resp.status_code == 200
    msg = accumulated(resp.get_data(as_text=True)) if stream else Message.model_validate(resp.get_json())
    if shown:
        assert [b.type for b in msg.content] == ["thinking", "text"]
        assert msg.content[0].thinking == "Step by step."
    else:
        assert [b.type for b in msg.content] == ["text"]
    assert msg.content[-1].text == "Answer."


# -- errors -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, param",
    [
        ({"model": "m", "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
        ({**BODY, "messages": [{"role": "tool", "content": "x"}]}, "messages.0.role"),
        ({**BODY, "tools": "all"}, "tools"),
    ],
)
def test_bad_input_is_400_invalid_request_error(make_client, chat_only, body, param):
    message = anthropic_error(make_client().post("/v1/messages", json=body), 400, "invalid_request_error")
    assert message.startswith(param)
    assert chat_only.requests == []


def test_not_json_is_400(make_client, chat_only):
    resp = make_client().post("/v1/messages", data="{nope", content_type="application/json")
    anthropic_error(resp, 400, "invalid_request_error")
    resp = make_client().post("/v1/messages", data="{}", content_type="text/plain")
    anthropic_error(resp, 400, "invalid_request_error")


def test_untranslatable_block_is_400_before_any_chat_call(make_client, chat_only):
    body = {
        **BODY,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"}}
                ],
            }
        ],
    }
    anthropic_error(make_client(MESSAGES_API="translate").post("/v1/messages", json=body), 400, "invalid_request_error")
    assert chat_only.chat_bodies() == []


@pytest.mark.parametrize(
    "status, kind",
    [
        (429, "rate_limit_error"),
        (500, "api_error"),
        (503, "overloaded_error"),
        (400, "invalid_request_error"),
        (401, "authentication_error"),
    ],
)
def test_upstream_errors_in_anthropic_shape(make_client, chat_only, status, kind):
    chat_only.answer(
        ChatAnswer(status=status, error={"error": {"message": f"upstream says {status}", "type": "x", "code": None}})
    )
    resp = make_client(MESSAGES_API="translate").post("/v1/messages", json=BODY)
    assert anthropic_error(resp, status, kind) == f"upstream says {status}"


def test_unreachable_upstream_is_502_api_error():
    from tests.support import free_port

    config = Config.from_env(
        {
            "TARGET_BASE_URL": f"http://127.0.0.1:{free_port()}/v1/",
            "MESSAGES_API": "translate",
            "CONNECT_TIMEOUT_SECONDS": "2",
        }
    )
    anthropic_error(create_app(config).test_client().post("/v1/messages", json=BODY), 502, "api_error")


def test_stream_broken_off_ends_with_an_error_event(make_client, chat_only):
    raw = (
        b'data: {"id":"c","object":"chat.completion.chunk","model":"m","choices":[{"index":0,'
        b'"delta":{"content":"Hal"},"finish_reason":null}]}\n\n'
    )
    chat_only.enqueue(Reply(headers={"Content-Type": "text/event-stream"}, parts=[raw, raw], drop_after=1))
    resp = make_client(MESSAGES_API="translate").post("/v1/messages", json={**BODY, "stream": True})
    events = events_of(resp.get_data(as_text=True))
    names = [n for n, _ in events]
    assert names[0] == "message_start" and names[-1] == "error" and "message_stop" not in names
    assert events[-1][1]["type"] == "error" and events[-1][1]["error"]["type"] == "api_error"


def test_echo_mode_is_an_anthropic_404():
    resp = create_app(Config()).test_client().post("/v1/messages", json=BODY)
    anthropic_error(resp, 404, "not_found_error")


# -- count_tokens ----------------------------------------------------------------------------------------------


def test_count_tokens_is_answered_locally(make_client, chat_only):
    client = make_client()
    small = client.post("/v1/messages/count_tokens", json={"model": "m", "messages": BODY["messages"]})
    assert small.status_code == 200 and set(small.get_json()) == {"input_tokens"}
    big = client.post(
        "/v1/messages/count_tokens", json={"model": "m", "messages": BODY["messages"], "system": "x" * 4000}
    )
    assert big.get_json()["input_tokens"] == small.get_json()["input_tokens"] + 1000
    anthropic_error(client.post("/v1/messages/count_tokens", json={"model": "m"}), 400, "invalid_request_error")
    assert chat_only.requests == []


# -- credentials -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers, status",
    [
        ({"x-api-key": TOKEN}, 200),
        ({"x-api-key": "tok-wrong-000000000000"}, 401),
        ({}, 401),
        ({"authorization": f"Bearer {TOKEN}", "x-api-key": "tok-wrong-000000000000"}, 200),  # Bearer counts
        ({"authorization": "Bearer tok-wrong-000000000000", "x-api-key": TOKEN}, 401),
    ],
)
@pytest.mark.parametrize(
    "path, body", [("/v1/messages", BODY), ("/v1/chat/completions", {"model": "m", "messages": BODY["messages"]})]
)
def test_x_api_key_is_a_credential_and_never_forwarded(make_client, chat_only, headers, status, path, body):
    client = make_client(GATEWAY_BEARER_TOKEN=TOKEN, MESSAGES_API="translate")
    resp = client.post(path, json=body, headers=headers)
    assert resp.status_code == status
    if status == 401:
        if path == "/v1/messages":
            anthropic_error(resp, 401, "authentication_error")
        assert chat_only.requests == []
        assert TOKEN not in resp.get_data(as_text=True)
        return
    sent = chat_only.requests[0].headers
    assert "x-api-key" not in sent and TOKEN not in json.dumps(sent)


def test_upstream_in_band_error_becomes_an_error_event(make_client, chat_only):
    chunk = (
        b'data: {"id":"c","object":"chat.completion.chunk","model":"m","choices":[{"index":0,'
        b'"delta":{"content":"Hal"},"finish_reason":null}]}\n\n'
    )
    error = b'data: {"error": {"message": "KV cache full", "type": "server_error"}}\n\n'
    chat_only.enqueue(
        Reply(headers={"Content-Type": "text/event-stream"}, parts=[chunk, error, chunk, b"data: [DONE]\n\n"])
    )
    resp = make_client(MESSAGES_API="translate").post("/v1/messages", json={**BODY, "stream": True})
    events = [(n, d) for n, d in events_of(resp.get_data(as_text=True)) if n is not None]
    assert events[-1] == ("error", {"type": "error", "error": {"type": "api_error", "message": "KV cache full"}})
    assert [n for n, _ in events].count("content_block_delta") == 1  # nothing after the error


# -- configuration ----------------------------------------------------------------------------------------------


def test_provider_messages_switch_in_the_config_file(tmp_path, chat_only):
    path = tmp_path / "config.yaml"
    path.write_text(f"providers:\n  local:\n    base_url: {chat_only.base_url}\n    messages: translate\n")
    config = Config.from_env({"COT_PROXY_CONFIG": str(path)})
    assert config.routing.providers["local"].apis == {"messages": "translate"}
    resp = create_app(config).test_client().post("/v1/messages", json={**BODY, "model": "local/m"})
    assert resp.status_code == 200 and resp.get_json()["model"] == "local/m"
    assert [r.path for r in chat_only.requests] == ["/v1/chat/completions"]
    assert chat_only.chat_bodies()[0]["model"] == "m"


def test_bad_messages_switch_stops_start_up(tmp_path):
    from app.envparse import ConfigError

    with pytest.raises(ConfigError, match="MESSAGES_API"):
        Config.from_env({"TARGET_BASE_URL": "http://127.0.0.1:9/v1/", "MESSAGES_API": "sometimes"})
    path = tmp_path / "config.yaml"
    path.write_text("providers:\n  local:\n    base_url: http://127.0.0.1:9/v1/\n    messages: maybe\n")
    with pytest.raises(ConfigError, match="providers.local.messages"):
        Config.from_env({"COT_PROXY_CONFIG": str(path)})


def test_query_goes_only_to_a_messages_server(upstream: FakeUpstream):
    """Claude Code asks for `/v1/messages?beta=true`: a chat server gets no query, a Messages server all of it."""
    client = create_app(Config.from_env({"TARGET_BASE_URL": upstream.base_url})).test_client()
    upstream.enqueue(json_reply({"error": {"message": "no such route"}}, status=404))
    resp = client.post("/v1/messages?beta=true", json=BODY)
    assert resp.status_code == 200 and resp.get_json()["type"] == "message"
    assert [r.path for r in upstream.requests] == ["/v1/messages?beta=true", "/v1/chat/completions"]


def test_fallback_from_a_messages_server_to_a_translated_chat_server(tmp_path, upstream: FakeUpstream, chat_only):
    """An alias routed to a native Messages server first (503) and a chat-only one next (auto: probe, translate):
    each attempt starts again from the client's request."""
    path = tmp_path / "config.yaml"
    path.write_text(
        f"providers:\n"
        f"  native: {{base_url: {upstream.base_url}, messages: passthrough, retries: 0}}\n"
        f"  local: {{base_url: {chat_only.base_url}, retries: 0}}\n"
        f"models:\n  claude: {{route: [native/claude-x, local/qwen3]}}\n"
    )
    upstream.enqueue(
        json_reply({"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}, status=503)
    )
    client = create_app(Config.from_env({"COT_PROXY_CONFIG": str(path)})).test_client()
    resp = client.post("/v1/messages", json={**BODY, "model": "claude"}, headers={"x-api-key": "sk-ant-x"})
    assert resp.status_code == 200, resp.get_data()
    msg = Message.model_validate(resp.get_json())
    assert msg.model == "claude" and msg.content[0].text == "Hello from upstream"
    assert upstream.requests[0].json() == {**BODY, "model": "claude-x"}
    assert [r.path for r in chat_only.requests] == ["/v1/messages", "/v1/chat/completions"]
    assert chat_only.requests[0].json() == {**BODY, "model": "qwen3"}  # the probe: the client's request
    assert chat_only.chat_bodies()[0]["model"] == "qwen3"
    assert resp.headers["x-cot-proxy-provider"].startswith("local")


def test_too_large_is_413_request_too_large(make_client, chat_only):
    resp = make_client(MAX_REQUEST_BYTES="1024").post("/v1/messages", json={**BODY, "system": "x" * 4096})
    anthropic_error(resp, 413, "request_too_large")
    assert chat_only.requests == []


def test_the_proxys_own_limits_are_anthropic_errors(tmp_path, make_client, chat_only):
    """A key's rpm (429 rate_limit_error, Retry-After kept) and model allow-list (403 permission_error)."""
    from app.access.store import KeyStore

    url = f"sqlite:///{tmp_path / 'keys.db'}"
    store = KeyStore(url)
    try:
        secret, _ = store.create("claude-code", rpm=1, models=["claude-*"])
        client = make_client(VIRTUAL_KEYS="true", DATABASE_URL=url, MESSAGES_API="translate")
        headers = {"x-api-key": secret}
        assert client.post("/v1/messages", json=BODY, headers=headers).status_code == 200
        resp = client.post("/v1/messages", json=BODY, headers=headers)
        anthropic_error(resp, 429, "rate_limit_error")
        assert int(resp.headers["retry-after"]) >= 1
        resp = client.post("/v1/messages", json={**BODY, "model": "gpt-4o"}, headers=headers)
        anthropic_error(resp, 403, "permission_error")
        assert len(chat_only.chat_bodies()) == 1
    finally:
        store.close()

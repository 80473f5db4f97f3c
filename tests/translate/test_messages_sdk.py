"""`/v1/messages` through real Gunicorn (2 workers) with the real `anthropic` SDK, against the chat-only fake.

The default `auto` mode: a worker's first request is answered 404 by the fake and sent again as chat
completions; after that the worker goes straight to chat. GATEWAY_BEARER_TOKEN is on, so the SDK's
`x-api-key` header is the credential. Every result is the SDK's own typed object: `messages.stream()`
results come from its accumulator, errors from its exception mapping.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import anthropic
import pytest
import requests
from anthropic.types import Message, MessageTokensCount, TextBlock, ThinkingBlock, ToolUseBlock

from app.access.store import KeyStore, usage_records
from tests.fakes.chat_only_upstream import ChatAnswer, ChatOnlyUpstream, ToolCall
from tests.support import Gunicorn

WORKERS = 2
KEY_NAME = "claude-code"
"""The virtual key the `keys` fixture (conftest.py) creates."""
TOKEN = "tok-anthropic-0123456789"
WEATHER = {
    "name": "get_weather",
    "description": "Weather of a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
ASK = [{"role": "user", "content": "Weather in Paris?"}]


@pytest.fixture(scope="module")
def proxy(fake: ChatOnlyUpstream, keys) -> Iterator[Gunicorn]:
    g = Gunicorn(
        {
            "TARGET_BASE_URL": fake.base_url,
            "GATEWAY_BEARER_TOKEN": TOKEN,
            "THINK_PREFILLED": "false",
            "REQUEST_TIMEOUT_SECONDS": "20",
            "VIRTUAL_KEYS": "true",
            "DATABASE_URL": keys[2],
            "USAGE_FLUSH_SECONDS": "0.2",
        },
        workers=WORKERS,
    )
    yield g
    g.stop()


@pytest.fixture
def sdk(proxy: Gunicorn, fake: ChatOnlyUpstream) -> anthropic.Anthropic:
    fake.reset()
    return anthropic.Anthropic(base_url=proxy.url, api_key=TOKEN, max_retries=0, timeout=30)


def test_create(sdk, fake):
    fake.answer(ChatAnswer(text="Sunny, 18C.", prompt_tokens=30, completion_tokens=6, cached_tokens=10))
    msg = sdk.messages.create(
        model="qwen3",
        max_tokens=64,
        system="Be brief.",
        messages=ASK,
        temperature=0.2,
        top_k=20,
        metadata={"user_id": "u-1"},
    )
    assert isinstance(msg, Message) and msg.model == "qwen3" and msg.role == "assistant"
    assert isinstance(msg.content[0], TextBlock) and msg.content[0].text == "Sunny, 18C."
    assert msg.stop_reason == "end_turn"
    assert (msg.usage.input_tokens, msg.usage.output_tokens, msg.usage.cache_read_input_tokens) == (20, 6, 10)
    body = fake.chat_bodies()[-1]
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert (body["max_tokens"], body["temperature"], body["top_k"]) == (64, 0.2, 20)
    assert len(fake.missing_hits()) <= WORKERS  # at most one probe per worker, ever
    sent = fake.requests[-1].headers
    assert "x-api-key" not in sent and TOKEN not in str(sent)


def test_stream_accumulates_to_the_typed_message(sdk, fake):
    fake.answer(ChatAnswer(text="Streaming from a chat-only server.", prompt_tokens=12, completion_tokens=8))
    with sdk.messages.stream(model="m", max_tokens=64, messages=ASK) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Streaming from a chat-only server."
    assert isinstance(final, Message) and final.content[0].text == text and final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (12, 8)


@pytest.mark.parametrize("stream", [False, True])
def test_tool_use_round_trip(sdk, fake, stream):
    fake.answer(
        ChatAnswer(
            text=None, tool_calls=[ToolCall("get_weather", '{"city": "Paris"}', id="call_w")], finish="tool_calls"
        ),
        ChatAnswer(text="It is 18C in Paris."),
    )
    kw = {"model": "m", "max_tokens": 128, "tools": [WEATHER], "tool_choice": {"type": "auto"}}
    if stream:
        with sdk.messages.stream(messages=ASK, **kw) as s:
            first = s.get_final_message()
    else:
        first = sdk.messages.create(messages=ASK, **kw)
    assert first.stop_reason == "tool_use"
    call = first.content[-1]
    assert isinstance(call, ToolUseBlock) and (call.id, call.name, call.input) == (
        "call_w",
        "get_weather",
        {"city": "Paris"},
    )
    history = [
        *ASK,
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "18C"}]},
    ]
    second = sdk.messages.create(messages=history, **kw)
    assert second.content[0].text == "It is 18C in Paris." and second.stop_reason == "end_turn"
    sent = fake.chat_bodies()[-1]["messages"]
    assert sent[1]["tool_calls"][0]["id"] == "call_w"
    assert sent[1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city":"Paris"}'}
    assert sent[2] == {"role": "tool", "tool_call_id": "call_w", "content": "18C"}


@pytest.mark.parametrize("reasoning_as", ["field", "think"])
def test_thinking(sdk, fake, reasoning_as):
    """THINK_MODE is strip (the default); `thinking` in the request brings the reasoning back as blocks."""
    answer = ChatAnswer(text="Paris.", reasoning="The capital of France.", reasoning_as=reasoning_as)
    fake.answer(answer, answer, answer)
    kw = {"model": "m", "max_tokens": 2048, "messages": [{"role": "user", "content": "Capital of France?"}]}
    thinking = {"type": "enabled", "budget_tokens": 1024}
    msg = sdk.messages.create(thinking=thinking, **kw)
    with sdk.messages.stream(thinking=thinking, **kw) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_message()
    for m in (msg, final):
        assert isinstance(m.content[0], ThinkingBlock) and m.content[0].thinking == "The capital of France."
        assert isinstance(m.content[1], TextBlock) and m.content[1].text == "Paris."
    assert "thinking" in kinds and "text" in kinds  # the SDK's own per-delta events
    plain = sdk.messages.create(**kw)  # not asked for: stripped, as configured
    assert [b.type for b in plain.content] == ["text"] and plain.content[0].text == "Paris."


def test_count_tokens(sdk, fake):
    small = sdk.messages.count_tokens(model="m", messages=ASK)
    big = sdk.messages.count_tokens(model="m", messages=ASK, system="x" * 4000, tools=[WEATHER])
    assert isinstance(small, MessageTokensCount) and small.input_tokens > 0
    assert big.input_tokens > small.input_tokens + 1000
    assert fake.requests == []


def test_errors_are_the_sdk_exceptions(proxy, sdk, fake):
    with pytest.raises(anthropic.AuthenticationError) as exc:
        anthropic.Anthropic(base_url=proxy.url, api_key="tok-wrong-000000000000", max_retries=0).messages.create(
            model="m", max_tokens=10, messages=ASK
        )
    assert exc.value.body["error"]["type"] == "authentication_error" and TOKEN not in str(exc.value.body)
    with pytest.raises(anthropic.BadRequestError) as exc:
        sdk.messages.create(model="m", max_tokens=10, messages=[])
    assert exc.value.body["error"]["type"] == "invalid_request_error"
    fake.answer(ChatAnswer(status=429, error={"error": {"message": "slow down", "type": "rate_limit"}}))
    with pytest.raises(anthropic.RateLimitError) as exc:
        sdk.messages.create(model="m", max_tokens=10, messages=ASK)
    assert exc.value.body == {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}
    fake.answer(ChatAnswer(status=500))
    with pytest.raises(anthropic.InternalServerError) as exc:
        sdk.messages.create(model="m", max_tokens=10, messages=ASK)
    assert exc.value.body["error"]["type"] == "api_error"
    assert len(fake.chat_bodies()) == 2  # the 401 and 400 never reached the upstream


def test_bearer_credential_works_too(proxy, fake):
    fake.reset()
    sdk = anthropic.Anthropic(base_url=proxy.url, auth_token=TOKEN, max_retries=0, timeout=30)
    assert sdk.messages.create(model="m", max_tokens=10, messages=ASK).content[0].text == "Hello from upstream"


def _usage_rows(store: KeyStore, request_id: str) -> list[dict]:
    with store.engine.connect() as conn:
        found = conn.execute(usage_records.select().where(usage_records.c.request_id == request_id))
        return [dict(r._mapping) for r in found]


@pytest.mark.parametrize("stream", [False, True])
def test_usage_is_accounted_for_a_virtual_key(proxy, fake, keys, stream):
    fake.reset()
    fake.default = ChatAnswer(text="counted", prompt_tokens=40, completion_tokens=3)
    sdk = anthropic.Anthropic(base_url=proxy.url, api_key=keys[1], max_retries=0, timeout=30)
    request_id = f"msg-usage-{stream}-{time.monotonic_ns()}"
    kw = {"model": "m", "max_tokens": 32, "messages": ASK, "extra_headers": {"X-Request-ID": request_id}}
    if stream:
        with sdk.messages.stream(**kw) as s:
            s.get_final_message()
    else:
        sdk.messages.create(**kw)
    deadline = time.monotonic() + 20
    rows = _usage_rows(keys[0], request_id)
    while not rows and time.monotonic() < deadline:
        time.sleep(0.1)  # polling the writer's flush (every 0.2 s), not synchronising the request
        rows = _usage_rows(keys[0], request_id)
    [row] = rows
    assert (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == (40, 3, 43)
    assert row["estimated"] is False and row["model"] == "m" and row["status"] == 200
    assert row["key_name"] == "claude-code" and row["streamed"] is stream


def _messages_count(proxy: Gunicorn) -> float:
    text = requests.get(proxy.url + "/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("cot_proxy_requests_total{") and 'route="messages"' in line
    )


def test_metrics_count_the_messages_route(sdk, proxy):
    before = _messages_count(proxy)
    sdk.messages.create(model="m", max_tokens=16, messages=ASK)
    with sdk.messages.stream(model="m", max_tokens=16, messages=ASK) as s:
        s.get_final_message()
    deadline = time.monotonic() + 20
    while _messages_count(proxy) < before + 2 and time.monotonic() < deadline:
        time.sleep(0.1)  # polling: the done hooks run after the last byte
    assert _messages_count(proxy) == before + 2


NATIVE_STREAM = (
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_native","type":"message",'
    b'"role":"assistant","model":"claude-native","content":[],"stop_reason":null,"stop_sequence":null,'
    b'"usage":{"input_tokens":5,"output_tokens":1}}}\n\n'
    b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
    b'"content_block":{"type":"text","text":""}}\n\n'
    b'event: ping\ndata: {"type": "ping"}\n\n'
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
    b'"delta":{"type":"text_delta","text":"native  bytes"}}\n\n'
    b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
    b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn",'
    b'"stop_sequence":null},"usage":{"output_tokens":3}}\n\n'
    b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
)


def test_passthrough_through_gunicorn_is_byte_identical():
    """An upstream that speaks Messages (auto: it answers, so it is remembered as such): the client gets
    its bytes exactly, and the SDK reads them."""
    from tests.fakes.openai_upstream import FakeUpstream, Reply

    native = FakeUpstream().start()
    g = Gunicorn({"TARGET_BASE_URL": native.base_url}, workers=1)
    try:
        split = len(NATIVE_STREAM) // 3  # upstream chunks that do not line up with events
        for _ in range(2):
            native.enqueue(
                Reply(
                    headers={"Content-Type": "text/event-stream"}, parts=[NATIVE_STREAM[:split], NATIVE_STREAM[split:]]
                )
            )
        body = {"model": "claude-native", "max_tokens": 16, "messages": ASK, "stream": True}
        with requests.post(g.url + "/v1/messages", json=body, stream=True, timeout=30) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            assert r.raw.read() == NATIVE_STREAM
        sdk = anthropic.Anthropic(base_url=g.url, api_key="sk-ant-client", max_retries=0, timeout=30)
        with sdk.messages.stream(model="claude-native", max_tokens=16, messages=ASK) as s:
            final = s.get_final_message()
        assert final.content[0].text == "native  bytes" and final.usage.output_tokens == 3
        assert [r.path for r in native.requests] == ["/v1/messages", "/v1/messages"]
        assert native.requests[-1].headers["x-api-key"] == "sk-ant-client"  # auth off: the client's, for upstream
    finally:
        g.stop()
        native.stop()

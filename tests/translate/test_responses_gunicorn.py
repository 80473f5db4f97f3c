"""`/v1/responses` through real Gunicorn (2 workers) with the real `openai` SDK, against the chat-only fake.

Clients use a virtual key, so usage accounting is checked too. The default `auto` mode: the first
request a worker sends is answered 404 by the fake and sent again
as chat completions; after that the worker goes straight to chat. THINK_MODE=separate, so `<think>`
text becomes reasoning items. Every result is the SDK's own typed object.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import openai
import pytest
import requests
from openai.types.responses import (
    Response,
    ResponseCustomToolCall,
    ResponseFunctionToolCall,
    ResponseOutputMessage,
    ResponseReasoningItem,
)

from app.access.store import KeyStore, usage_records
from tests.fakes.chat_only_upstream import ChatAnswer, ChatOnlyUpstream, ToolCall
from tests.support import Gunicorn

WORKERS = 2
KEY_NAME = "codex"
"""The virtual key the `keys` fixture (conftest.py) creates."""
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather of a city",
    "strict": False,
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture(scope="module")
def proxy(fake: ChatOnlyUpstream, keys) -> Iterator[Gunicorn]:
    g = Gunicorn(
        {
            "TARGET_BASE_URL": fake.base_url,
            "THINK_MODE": "separate",
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
def sdk(proxy: Gunicorn, fake: ChatOnlyUpstream, keys) -> openai.OpenAI:
    fake.reset()
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key=keys[1], max_retries=0, timeout=30)


def test_create_non_streamed(sdk, fake):
    fake.default = ChatAnswer(
        text="Paris.",
        reasoning="The capital of France.",
        reasoning_as="think",
        prompt_tokens=30,
        completion_tokens=9,
        cached_tokens=12,
    )
    r = sdk.responses.create(
        model="qwen3",
        input="Capital of France?",
        instructions="Answer in one word.",
        max_output_tokens=64,
        temperature=0.1,
    )
    assert isinstance(r, Response) and r.status == "completed" and r.model == "qwen3"
    assert r.output_text == "Paris."
    reasoning, message = r.output
    assert isinstance(reasoning, ResponseReasoningItem) and reasoning.content[0].text == "The capital of France."
    assert isinstance(message, ResponseOutputMessage)
    assert r.usage.input_tokens == 30 and r.usage.output_tokens == 9 and r.usage.total_tokens == 39
    assert r.usage.input_tokens_details.cached_tokens == 12
    body = fake.chat_bodies()[-1]
    assert body["messages"][0] == {"role": "system", "content": "Answer in one word."}
    assert body["max_tokens"] == 64
    # At most one 404 per worker, ever: each remembers the backend.
    assert len(fake.missing_hits()) <= WORKERS


def test_create_streamed_events(sdk, fake):
    fake.default = ChatAnswer(text="Hello from a chat-only server", reasoning="Say hello.", reasoning_as="field")
    events = list(sdk.responses.create(model="m", input="hi", stream=True))
    types = [e.type for e in events]
    assert types[0] == "response.created" and types[1] == "response.in_progress" and types[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    reasoning = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
    assert text == "Hello from a chat-only server" and reasoning == "Say hello."
    final = events[-1].response
    assert final.output_text == text and final.usage.total_tokens == 18


def test_stream_accumulator(sdk, fake):
    fake.default = ChatAnswer(text="Accumulated answer.", reasoning="Think first.", reasoning_as="think")
    with sdk.responses.stream(model="m", input="hi") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == "Accumulated answer."
    assert final.output_text == "Accumulated answer." and final.status == "completed"
    assert isinstance(final.output[0], ResponseReasoningItem)
    assert final.output[0].content[0].text == "Think first."


@pytest.mark.parametrize("stream", [False, True])
def test_function_tool_round_trip(sdk, fake, stream):
    fake.answer(
        ChatAnswer(
            text=None, tool_calls=[ToolCall("get_weather", '{"city": "Oslo"}', id="call_oslo")], finish="tool_calls"
        ),
        ChatAnswer(text="It is snowing in Oslo."),
    )
    if stream:
        with sdk.responses.stream(model="m", input="Weather in Oslo?", tools=[WEATHER]) as s:
            first = s.get_final_response()
    else:
        first = sdk.responses.create(model="m", input="Weather in Oslo?", tools=[WEATHER])
    [call] = first.output
    assert isinstance(call, ResponseFunctionToolCall) and call.name == "get_weather" and call.call_id == "call_oslo"
    assert json.loads(call.arguments) == {"city": "Oslo"}
    second = sdk.responses.create(
        model="m",
        previous_response_id=first.id,
        tools=[WEATHER],
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": '{"weather": "snow"}'}],
    )
    assert second.output_text == "It is snowing in Oslo." and second.previous_response_id == first.id
    messages = fake.chat_bodies()[-1]["messages"]
    assert messages == [
        {"role": "user", "content": "Weather in Oslo?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_oslo",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_oslo", "content": '{"weather": "snow"}'},
    ]


def test_previous_response_and_retrieve_across_workers(sdk, fake):
    """Stored in the file the workers share: every follow-up finds it, whichever worker answers."""
    fake.default = ChatAnswer(text="Noted.")
    first = sdk.responses.create(model="m", input="My number is 7.")
    for i in range(6):  # the kernel spreads new connections over both workers
        fresh = openai.OpenAI(base_url=str(sdk.base_url), api_key=sdk.api_key, max_retries=0, timeout=30)
        got = fresh.responses.retrieve(first.id)
        assert got.id == first.id and got.output_text == "Noted."
        follow = fresh.responses.create(model="m", input=f"Question {i}", previous_response_id=first.id)
        assert follow.status == "completed"
        assert fake.chat_bodies()[-1]["messages"][:2] == [
            {"role": "user", "content": "My number is 7."},
            {"role": "assistant", "content": "Noted."},
        ]
    with pytest.raises(openai.BadRequestError) as info:
        sdk.responses.create(model="m", input="x", previous_response_id="resp_unknown")
    assert info.value.code == "previous_response_not_found"


def test_bad_input_is_a_typed_400(sdk, fake):
    with pytest.raises(openai.BadRequestError) as info:
        sdk.responses.create(model="m", input="x", tools=[{"type": "web_search"}])
    assert info.value.param == "tools[0].type"
    with pytest.raises(openai.BadRequestError):
        sdk.responses.create(model="m", input=[{"role": "robot", "content": "x"}])
    assert not fake.chat_bodies()


def test_stored_responses_belong_to_their_key(sdk, fake, keys):
    first = sdk.responses.create(model="m", input="secret plans")
    other_secret, _ = keys[0].create("someone-else")
    other = openai.OpenAI(base_url=str(sdk.base_url), api_key=other_secret, max_retries=0, timeout=30)
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(first.id)  # not stored for this key: asked upstream, which 404s
    with pytest.raises(openai.BadRequestError):
        other.responses.create(model="m", input="x", previous_response_id=first.id)


def _usage_rows(store: KeyStore, request_id: str) -> list[dict]:
    with store.engine.connect() as conn:
        found = conn.execute(usage_records.select().where(usage_records.c.request_id == request_id))
        return [dict(r._mapping) for r in found]


@pytest.mark.parametrize("stream", [False, True])
def test_usage_is_accounted(sdk, fake, keys, stream):
    fake.default = ChatAnswer(text="counted", prompt_tokens=40, completion_tokens=3)
    request_id = f"resp-usage-{stream}-{time.monotonic_ns()}"
    if stream:
        with sdk.responses.stream(model="m", input="count me", extra_headers={"X-Request-ID": request_id}) as s:
            s.get_final_response()
    else:
        sdk.responses.create(model="m", input="count me", extra_headers={"X-Request-ID": request_id})
    deadline = time.monotonic() + 20
    rows = _usage_rows(keys[0], request_id)
    while not rows and time.monotonic() < deadline:
        time.sleep(0.1)  # polling the writer's flush (every 0.2 s), not synchronising the request
        rows = _usage_rows(keys[0], request_id)
    [row] = rows
    assert (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == (40, 3, 43)
    assert row["estimated"] is False and row["model"] == "m" and row["status"] == 200


def _responses_count(proxy: Gunicorn) -> float:
    text = requests.get(proxy.url + "/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("cot_proxy_requests_total{") and 'route="responses"' in line
    )


def test_metrics_count_the_responses_route(sdk, fake, proxy):
    before = _responses_count(proxy)
    sdk.responses.create(model="m", input="one")
    with sdk.responses.stream(model="m", input="two") as s:
        s.get_final_response()
    deadline = time.monotonic() + 20
    while _responses_count(proxy) < before + 2 and time.monotonic() < deadline:
        time.sleep(0.1)  # polling: the done hooks run after the last byte
    assert _responses_count(proxy) == before + 2


def test_broken_stream_raises_in_the_sdk(sdk, fake):
    fake.answer(ChatAnswer(text="This answer never ends properly", drop_after=4))
    seen = []
    with pytest.raises(openai.APIError):
        for event in sdk.responses.create(model="m", input="hi", stream=True):
            seen.append(event.type)
    assert seen[:2] == ["response.created", "response.in_progress"] and "response.failed" in seen


def test_custom_tool_round_trip_in_the_sdk(sdk, fake):
    """Codex's freeform apply_patch: streamed as a custom tool call, continued with its output."""
    patch = "*** Begin Patch\n*** Add File: a.txt\n+hi\n*** End Patch"
    tool = {"type": "custom", "name": "apply_patch", "description": "Edit files."}
    fake.answer(
        ChatAnswer(text=None, tool_calls=[ToolCall("apply_patch", json.dumps({"input": patch}))], finish="tool_calls"),
        ChatAnswer(text="Patched."),
    )
    with sdk.responses.stream(model="m", input="Add a.txt", tools=[tool]) as stream:
        first = stream.get_final_response()
    [call] = first.output
    assert isinstance(call, ResponseCustomToolCall) and call.input == patch and call.name == "apply_patch"
    second = sdk.responses.create(
        model="m",
        previous_response_id=first.id,
        tools=[tool],
        input=[{"type": "custom_tool_call_output", "call_id": call.call_id, "output": "Done"}],
    )
    assert second.output_text == "Patched."
    assert fake.chat_bodies()[-1]["messages"][-1] == {"role": "tool", "tool_call_id": call.call_id, "content": "Done"}

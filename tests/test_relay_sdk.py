"""Through the proxy with the real `openai` SDK, against the real fake upstream."""

from __future__ import annotations

import openai
import pytest

from tests.fakes.openai_upstream import Reply, chat_chunk, json_reply, sse_reply

MSG = [{"role": "user", "content": "hi"}]


def test_chat_non_streaming(live, upstream):
    out = live.sdk().chat.completions.create(model="fake-model", messages=MSG, temperature=0.2, extra_body={"top_k": 3})
    assert out.choices[0].message.content == "Hello from upstream"
    sent = upstream.last.json()
    assert sent["temperature"] == 0.2 and sent["top_k"] == 3, "unknown fields pass untouched"
    assert upstream.last.path == "/v1/chat/completions"


def test_chat_streaming(live, upstream):
    stream = live.sdk().chat.completions.create(
        model="fake-model", messages=MSG, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from upstream"
    assert chunks[-1].usage.total_tokens == 6


def test_stream_split_at_odd_offsets(live, upstream):
    events = [chat_chunk("a"), chat_chunk("b"), chat_chunk("c", finish="stop")]
    upstream.enqueue(sse_reply(events, splits=[1, 7, 30, 31, 80, 120, 121]))
    stream = live.sdk().chat.completions.create(model="m", messages=MSG, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream) == "abc"


def test_completions(live, upstream):
    sdk = live.sdk()
    assert sdk.completions.create(model="m", prompt="x").choices[0].text == "Hi!"
    assert "".join(c.choices[0].text for c in sdk.completions.create(model="m", prompt="x", stream=True)) == "Hi!"


def test_embeddings_base64_default(live, upstream):
    out = live.sdk().embeddings.create(model="e", input=["a", "b"])
    assert upstream.last.json()["encoding_format"] == "base64"
    assert [round(x, 3) for x in out.data[1].embedding] == [0.6, 0.8, 0.0]


def test_models(live, upstream):
    assert [m.id for m in live.sdk().models.list()] == ["fake-model"]


@pytest.mark.parametrize(
    "status, exc",
    [
        (400, openai.BadRequestError),
        (401, openai.AuthenticationError),
        (404, openai.NotFoundError),
        (429, openai.RateLimitError),
        (500, openai.InternalServerError),
    ],
)
def test_upstream_error_status_maps_to_sdk_exception(live, upstream, status, exc):
    body = {"error": {"message": f"upstream says {status}", "type": "x", "param": None, "code": "c"}}
    upstream.enqueue(json_reply(body, status=status))
    with pytest.raises(exc) as info:
        live.sdk().chat.completions.create(model="m", messages=MSG)
    assert info.value.status_code == status
    assert info.value.body["message"] == f"upstream says {status}"


def test_garbage_is_502(live, upstream):
    upstream.enqueue(Reply(parts=[b"<html>not json"], chunked=False))
    with pytest.raises(openai.InternalServerError) as info:
        live.sdk().chat.completions.create(model="m", messages=MSG)
    assert info.value.status_code == 502
    assert info.value.code == "upstream_bad_response"


def test_timeout_is_504(app, upstream):
    from app import create_app
    from tests.support import LiveServer, proxy_config

    server = LiveServer(create_app(proxy_config(upstream, read_timeout=0.3)))
    try:
        upstream.enqueue(Reply(before_first=1.0, parts=[b"{}"]))
        with pytest.raises(openai.InternalServerError) as info:
            server.sdk().chat.completions.create(model="m", messages=MSG)
        assert info.value.status_code == 504
    finally:
        server.stop()


def test_mid_stream_failure_raises_api_error(live, upstream):
    upstream.enqueue(sse_reply([chat_chunk("partial"), chat_chunk("never")], drop_after=1))
    stream = live.sdk().chat.completions.create(model="m", messages=MSG, stream=True)
    got = []
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            got.append(chunk.choices[0].delta.content)
    assert got == ["partial"]
    assert "broke off" in info.value.message


def test_connection_refused_is_502():
    import socket

    from app import create_app
    from app.config import Config
    from tests.support import LiveServer

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    server = LiveServer(create_app(Config(target_base_url=f"http://127.0.0.1:{port}/v1/", connect_timeout=1)))
    try:
        with pytest.raises(openai.InternalServerError) as info:
            server.sdk().chat.completions.create(model="m", messages=MSG)
        assert info.value.status_code == 502
        assert info.value.code == "upstream_unavailable"
    finally:
        server.stop()


def test_echo_mode_with_sdk(live_echo):
    sdk = live_echo.sdk()
    out = sdk.chat.completions.create(model="anything", messages=[{"role": "user", "content": "hello"}])
    assert out.choices[0].message.content == "Echo: hello"
    assert (out.usage.prompt_tokens, out.usage.completion_tokens, out.usage.total_tokens) == (1, 2, 3)
    chunks = list(
        sdk.chat.completions.create(
            model="x",
            messages=[{"role": "user", "content": "hello"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Echo: hello"
    assert chunks[-1].usage.total_tokens == 3
    emb = sdk.embeddings.create(model="echo", input="abc")
    assert abs(sum(x * x for x in emb.data[0].embedding) - 1.0) < 1e-5
    assert emb.data[0].embedding == sdk.embeddings.create(model="echo", input="abc").data[0].embedding
    assert [m.id for m in sdk.models.list()] == ["echo"]

"""Compressed upstream answers, through real Gunicorn.

A JSON answer (chat, completions, embeddings, models), an SSE stream or an error body that the
upstream compresses (gzip, deflate with and without its zlib wrapper, and br / zstd when `brotli` /
`zstandard` are installed), framed by Content-Length or chunked, reaches the client decoded: no
Content-Encoding, valid JSON or SSE. The `openai` SDK (Accept-Encoding: gzip, deflate) gets a normal
answer and a normal stream. Pass-through routes relay the compressed bytes and their
Content-Encoding unchanged. The client side is read off a raw socket: `requests` would decode
gzip itself and hide a proxy that forgot to.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator

import openai
import pytest

from tests.fakes.hostile_upstream import (
    STREAM_TEXT,
    chat_stream_bytes,
    compress,
    compressed,
    encoding_available,
)
from tests.fakes.openai_upstream import chat_completion
from tests.support import Gunicorn, RawResponse, raw_request, sse_data

MSG = [{"role": "user", "content": "hi"}]
SDK_HEADERS = {"Accept-Encoding": "gzip, deflate"}


def _encodings(*names: str) -> list:
    return [
        pytest.param(n, marks=pytest.mark.skipif(not encoding_available(n), reason=f"{n} codec not installed"))
        for n in names
    ]


ENCODINGS = _encodings("gzip", "deflate", "deflate-raw", "br", "zstd")
FRAMINGS = ["content-length", "chunked"]

ANSWERS = {
    # route -> (method, request body, upstream JSON answer)
    "/v1/chat/completions": ("POST", {"model": "m", "messages": MSG}, chat_completion("Hello, compressed")),
    "/v1/completions": (
        "POST",
        {"model": "m", "prompt": "hi"},
        {
            "id": "cmpl-z",
            "object": "text_completion",
            "created": 1700000000,
            "model": "m",
            "choices": [{"index": 0, "text": "Hello, compressed", "logprobs": None, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
        },
    ),
    "/v1/embeddings": (
        "POST",
        {"model": "e", "input": "hi"},
        {
            "object": "list",
            "model": "e",
            "data": [{"object": "embedding", "index": 0, "embedding": [0.25, 0.5, 0.75]}],
            "usage": {"prompt_tokens": 1, "total_tokens": 1},
        },
    ),
    "/v1/models": (
        "GET",
        None,
        {
            "object": "list",
            "data": [{"id": "compressed-model", "object": "model", "created": 1700000000, "owned_by": "z"}],
        },
    ),
}


@pytest.fixture(scope="module", params=["gevent", "requests"])
def proxy(upstream, request) -> Iterator[Gunicorn]:
    """The proxy on each upstream transport (app/transport.py, and requests' own adapter)."""
    env = {"TARGET_BASE_URL": upstream.url("/tenant-a/v1/"), "REQUEST_TIMEOUT_SECONDS": "10"}
    g = Gunicorn({**env, "UPSTREAM_TRANSPORT": request.param}, workers=1)
    yield g
    g.stop()


def _call(g: Gunicorn, method: str, path: str, body: dict | None) -> RawResponse:
    headers = dict(SDK_HEADERS)
    raw = None
    if body is not None:
        headers["Content-Type"] = "application/json"
        raw = json.dumps(body).encode()
    return raw_request(g.port, method, path, headers, raw)


def _assert_decoded(r: RawResponse) -> None:
    assert r.headers.get("content-encoding", "identity") == "identity", (
        f"Content-Encoding {r.headers.get('content-encoding')!r} reached the client: {r}"
    )


@pytest.mark.parametrize("framing", FRAMINGS)
@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("route", list(ANSWERS))
def test_json_answer_reaches_client_decoded(proxy, up, route, encoding, framing):
    method, body, answer = ANSWERS[route]
    up.enqueue(compressed(json.dumps(answer).encode(), encoding, chunked=framing == "chunked"))
    r = _call(proxy, method, route, body)
    assert r.status == 200, r
    _assert_decoded(r)
    assert r.json() == answer
    assert len(up.requests) == 1


@pytest.mark.parametrize("framing", FRAMINGS)
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_sse_stream_reaches_client_decoded(proxy, up, encoding, framing):
    up.enqueue(
        compressed(
            chat_stream_bytes("m"), encoding, content_type="text/event-stream", chunked=framing == "chunked", pieces=5
        )
    )
    r = _call(proxy, "POST", "/v1/chat/completions", {"model": "m", "messages": MSG, "stream": True})
    assert r.status == 200, r
    _assert_decoded(r)
    assert r.headers["content-type"].startswith("text/event-stream")
    data = sse_data(r.body)
    assert data and data[-1] == "[DONE]", r
    chunks = [json.loads(d) for d in data[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "".join(STREAM_TEXT)


ERROR_JSON = {
    "error": {"message": "bad things", "type": "invalid_request_error", "param": "model", "code": "model_not_found"}
}


@pytest.mark.parametrize("framing", FRAMINGS)
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_json_error_body_reaches_client_decoded(proxy, up, encoding, framing):
    up.enqueue(compressed(json.dumps(ERROR_JSON).encode(), encoding, status=404, chunked=framing == "chunked"))
    r = _call(proxy, "POST", "/v1/chat/completions", {"model": "m", "messages": MSG})
    assert r.status == 404, r
    _assert_decoded(r)
    assert r.json() == ERROR_JSON


@pytest.mark.parametrize("framing", FRAMINGS)
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_text_error_body_is_decoded_then_wrapped(proxy, up, encoding, framing):
    up.enqueue(
        compressed(b"upstream says no", encoding, status=403, content_type="text/plain", chunked=framing == "chunked")
    )
    r = _call(proxy, "POST", "/v1/chat/completions", {"model": "m", "messages": MSG})
    assert r.status == 403, r
    _assert_decoded(r)
    assert r.error()["message"] == "upstream says no"


@pytest.mark.parametrize("framing", FRAMINGS)
@pytest.mark.parametrize("encoding", _encodings("gzip", "deflate"))
def test_openai_sdk_gets_normal_answer_and_stream(proxy, up, encoding, framing):
    sdk = openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-client", max_retries=0, timeout=10)
    try:
        answer = chat_completion("Hello, compressed")
        up.enqueue(compressed(json.dumps(answer).encode(), encoding, chunked=framing == "chunked"))
        out = sdk.chat.completions.create(model="m", messages=MSG)
        assert out.choices[0].message.content == "Hello, compressed"

        up.enqueue(
            compressed(
                chat_stream_bytes("m"),
                encoding,
                content_type="text/event-stream",
                chunked=framing == "chunked",
                pieces=5,
            )
        )
        chunks = list(sdk.chat.completions.create(model="m", messages=MSG, stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "".join(STREAM_TEXT)
    finally:
        sdk.close()


@pytest.mark.parametrize("framing", FRAMINGS)
def test_passthrough_relays_compressed_bytes_unchanged(proxy, up, framing):
    original = json.dumps({"id": "file-1", "object": "file", "bytes": 1234, "pad": "z" * 2000}).encode()
    wire, _ = compress(original, "gzip")
    up.enqueue(compressed(original, "gzip", chunked=framing == "chunked"))  # gzip output is deterministic
    r = raw_request(proxy.port, "GET", "/v1/files/file-1", SDK_HEADERS)
    assert r.status == 200, r
    assert r.headers.get("content-encoding") == "gzip"
    assert r.body == wire
    assert gzip.decompress(r.body) == original

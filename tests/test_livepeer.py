"""In front of a (fake) Livepeer BYOC gateway: headers, routes, noise removed."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import replace

import pytest
import requests

from app import create_app
from app.bounds import Bounds
from app.config import Config
from app.envparse import ConfigError
from app.livepeer.settings import LivepeerSettings, listen_address
from tests.fakes import livepeer_gateway
from tests.fakes.livepeer_gateway import NOISE, decode_header
from tests.fakes.openai_upstream import FakeUpstream, Reply
from tests.support import LiveServer

MSG = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def _gateway() -> Iterator[FakeUpstream]:
    server = livepeer_gateway.start()
    yield server
    server.stop()


@pytest.fixture
def gateway(_gateway: FakeUpstream) -> FakeUpstream:
    _gateway.reset()
    _gateway.responder = livepeer_gateway.respond
    return _gateway


def lp_config(gateway: FakeUpstream, **env: str) -> Config:
    settings = LivepeerSettings.from_env({"GATEWAY_URL": gateway.root + "/", **env})
    return Config(livepeer=settings, connect_timeout=2)


@pytest.fixture
def lp(gateway: FakeUpstream) -> Iterator[LiveServer]:
    server = LiveServer(create_app(lp_config(gateway, LIVEPEER_ORCHESTRATORS_INCLUDE="0xabc, 0xdef")))
    yield server
    server.stop()


def test_header_is_exact():
    settings = LivepeerSettings.from_env({"GATEWAY_URL": "http://gw:9935"})
    cap = settings.routes["chat/completions"]
    expected = (
        '{"capability":"openai-chat-completions","parameters":"{\\"orchestrators\\":{\\"include\\":[],'
        '\\"exclude\\":[]}}","request":"{\\"run\\":\\"openai-chat-completions\\"}","timeout_seconds":120}'
    )
    assert base64.b64decode(settings.header(cap)).decode() == expected


def test_settings_from_env():
    s = LivepeerSettings.from_env(
        {
            "GATEWAY_URL": "http://gw:9935/",
            "RERANK_CAPABILITY": "",
            "RERANK_TIMEOUT_SECONDS": "",
            "VIDEO_GENERATION_TIMEOUT_SECONDS": "60",
        }
    )
    assert s.gateway_url == "http://gw:9935"
    assert s.routes["rerank"].name == "cohere-rerank" and s.routes["rerank"].timeout_seconds == 30
    assert s.routes["video/pipeline/generations"].timeout_seconds == 900
    assert s.routes["video/pipeline/generations/status"].timeout_seconds == 30
    assert s.routes["video/generations"].timeout_seconds == 60
    assert LivepeerSettings.from_env({}) is None
    with pytest.raises(ConfigError, match="CHAT_COMPLETIONS_TIMEOUT_SECONDS"):
        LivepeerSettings.from_env({"GATEWAY_URL": "http://gw", "CHAT_COMPLETIONS_TIMEOUT_SECONDS": "1.5"})
    assert listen_address({"PROXY_ADDR": ":8090"}) == ("0.0.0.0", 8090)
    assert listen_address({"PROXY_ADDR": "127.0.0.1:9000"}) == ("127.0.0.1", 9000)


def test_chat_stream_is_clean(lp, gateway):
    sdk = lp.sdk()
    chunks = list(sdk.chat.completions.create(model="m", messages=MSG, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello Livepeer"
    resp = requests.post(
        lp.url + "/v1/chat/completions",
        json={"model": "m", "messages": MSG, "stream": True},
        headers={"Authorization": "Bearer sk-client"},
    )
    assert resp.headers["Content-Type"] == "text/event-stream"
    assert b"balance" not in resp.content and b"event:" not in resp.content
    assert b"\n\n\n" not in resp.content, "events are dropped whole, no stray blank lines"
    assert resp.content.endswith(b"data: [DONE]\n\n")
    for name in NOISE:
        assert name not in resp.headers
    sent = gateway.last
    assert sent.path == "/process/request/v1/chat/completions"
    assert "authorization" not in sent.headers
    header = decode_header(sent.headers["livepeer"])
    assert header["capability"] == "openai-chat-completions" and header["timeout_seconds"] == 120
    assert json.loads(header["parameters"]) == {"orchestrators": {"include": ["0xabc", "0xdef"], "exclude": []}}


def test_chat_non_stream(lp, gateway):
    out = lp.sdk().chat.completions.create(model="m", messages=MSG)
    assert out.choices[0].message.content == "Hello Livepeer"
    resp = requests.post(lp.url + "/v1/chat/completions", json={"model": "m", "messages": MSG})
    assert resp.headers["Content-Type"] == "application/json"
    assert not set(NOISE) & set(resp.headers)


def test_only_safe_headers_reach_gateway(lp, gateway):
    requests.post(
        lp.url + "/v1/embeddings",
        json={"model": "e", "input": "x"},
        headers={"Authorization": "Bearer sk-secret", "X-Request-ID": "rid-1", "Cookie": "a=b", "X-Custom": "y"},
    )
    sent = gateway.last.headers
    assert sent["x-request-id"] == "rid-1"
    for leaked in ("authorization", "cookie", "x-custom"):
        assert leaked not in sent


def test_embeddings_and_images_with_sdk(lp, gateway):
    sdk = lp.sdk()
    assert sdk.embeddings.create(model="e", input=["a", "b"], encoding_format="float").data[1].embedding == [0.6, 0.8]
    assert decode_header(gateway.last.headers["livepeer"])["capability"] == "openai-text-embeddings"
    image = sdk.images.generate(model="sd", prompt="a cat")
    assert base64.b64decode(image.data[0].b64_json) == b"PNG"
    assert decode_header(gateway.last.headers["livepeer"])["capability"] == "openai-image-generation"


@pytest.mark.parametrize(
    "path, capability, timeout, body, expect",
    [
        ("/v1/rerank", "cohere-rerank", 30, {"model": "r", "query": "q", "documents": ["a", "b"]}, "results"),
        ("/v1/video/pipeline/generations", "video-pipeline-generation", 900, {"prompt": "p"}, "id"),
        ("/v1/video/pipeline/generations/status", "video-pipeline-generation", 30, {"id": "job-123"}, "status"),
        ("/v1/video/generations", "video-generation", 900, {"prompt": "p"}, "id"),
        ("/v1/video/generations/status", "video-generation", 30, {"id": "job-123"}, "status"),
    ],
)
def test_raw_routes(lp, gateway, path, capability, timeout, body, expect):
    resp = requests.post(lp.url + path, json=body)
    assert resp.status_code == 200, resp.text
    assert expect in resp.json()
    assert resp.headers["Content-Type"] == "application/json"
    assert not set(NOISE) & set(resp.headers)
    sent = gateway.last
    assert sent.path == "/process/request" + path and sent.json() == body
    header = decode_header(sent.headers["livepeer"])
    assert (header["capability"], header["timeout_seconds"]) == (capability, timeout)


def test_method_not_allowed(lp, gateway):
    resp = requests.get(lp.url + "/v1/embeddings")
    assert resp.status_code == 405 and resp.json()["error"]["code"] == "method_not_allowed"
    assert gateway.requests == []


def test_gateway_rejection_passes_as_error(lp, gateway):
    gateway.enqueue(Reply(status=400, headers={"Content-Type": "text/plain"}, parts=[b"bad header"], chunked=False))
    resp = requests.post(lp.url + "/v1/rerank", json={"query": "q", "documents": []})
    assert resp.status_code == 400 and resp.json()["error"]["message"] == "bad header"


def test_timeout_504_and_unreachable_502(gateway):
    server = LiveServer(create_app(lp_config(gateway, RERANK_TIMEOUT_SECONDS="1")))
    try:
        gateway.enqueue(Reply(before_first=2.0, parts=[b"{}"]))
        assert requests.post(server.url + "/v1/rerank", json={"query": "q"}).status_code == 504
    finally:
        server.stop()
    dead = replace(lp_config(gateway), livepeer=LivepeerSettings.from_env({"GATEWAY_URL": "http://127.0.0.1:1"}))
    resp = create_app(dead).test_client().post("/v1/rerank", json={"query": "q"})
    assert resp.status_code == 502 and resp.get_json()["error"]["code"] == "upstream_unavailable"


def test_oversized_body_413_not_truncated(gateway):
    c = create_app(replace(lp_config(gateway), bounds=Bounds(max_request_bytes=64))).test_client()
    assert c.post("/v1/embeddings", json={"input": "x" * 100}).status_code == 413
    assert gateway.requests == []

"""Real Gunicorn with gunicorn.conf.py, in front of the real fake upstream."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import openai
import pytest

from tests.fakes.openai_upstream import FakeUpstream, Reply, chat_chunk, sse_reply
from tests.support import Gunicorn, failed_start

MSG = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def gunicorn(module_upstream: FakeUpstream) -> Iterator[Gunicorn]:
    g = Gunicorn({"TARGET_BASE_URL": module_upstream.base_url, "REQUEST_TIMEOUT_SECONDS": "20"})
    yield g
    g.stop()


@pytest.fixture
def up(module_upstream: FakeUpstream) -> FakeUpstream:
    module_upstream.reset()
    return module_upstream


def test_sdk_streams_through_gunicorn(gunicorn, up):
    with openai.OpenAI(base_url=gunicorn.url + "/v1", api_key="k", max_retries=0) as sdk:  # closed: see below
        chunks = list(sdk.chat.completions.create(model="m", messages=MSG, stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello from upstream"
        out = sdk.chat.completions.create(model="m", messages=MSG)
        assert out.choices[0].message.content == "Hello from upstream"


def _open_stream(url: str) -> socket.socket:
    port = int(url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    body = json.dumps({"model": "m", "messages": MSG, "stream": True}).encode()
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    return sock


def test_client_gone_mid_stream_closes_upstream_within_1s(gunicorn, up):
    # A slow upstream: one event every 5 s, so only the proxy noticing the client can end it fast.
    up.enqueue(sse_reply([chat_chunk("tick")], done=False, delay=5.0, endless=True))
    sock = _open_stream(gunicorn.url)
    got = b""
    while b"tick" not in got:
        got += sock.recv(4096)
    closed_at = time.monotonic()
    sock.close()
    assert up.disconnected.wait(5), "upstream connection was never closed"
    assert up.disconnected_at - closed_at < 1.0


def test_client_gone_before_first_byte_closes_upstream_within_1s(gunicorn, up):
    up.enqueue(Reply(hang=True))
    sock = _open_stream(gunicorn.url)
    assert up.arrived.wait(10)
    closed_at = time.monotonic()
    sock.close()
    assert up.disconnected.wait(5), "upstream connection was never closed"
    assert up.disconnected_at - closed_at < 1.0


def test_echo_mode_under_gunicorn():
    g = Gunicorn({})
    try:
        # closed before the stop: an idle kept-alive connection would hold a worker for the keepalive (5 s)
        with openai.OpenAI(base_url=g.url + "/v1", api_key="k", max_retries=0) as sdk:
            out = sdk.chat.completions.create(model="m", messages=[{"role": "user", "content": "hello"}])
        assert out.choices[0].message.content == "Echo: hello"
    finally:
        log = g.stop()
    assert "ECHO MODE" in log


def test_bad_config_stops_startup_naming_variable():
    code, output = failed_start({"TARGET_BASE_URL": "not a url"})
    assert code != 0
    assert "TARGET_BASE_URL" in output

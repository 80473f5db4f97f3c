"""The relay is usable without Flask: an Exchange and a client side built by hand, a real
router, upstream client and pipeline, against the fake upstream."""

from __future__ import annotations

from io import BytesIO

import orjson

from app.api.chat import CHAT as FAMILY
from app.body import RequestBody, read_json_object
from app.disconnect import DisconnectWatch
from app.exchange import Exchange
from app.relay import Relay
from app.routing.router import Router
from app.transforms import build_pipeline
from app.upstream import Upstream
from tests.fakes.openai_upstream import chat_chunk, sse_reply
from tests.support import proxy_config


class HandMadeClient:
    """The client side (`relay.Client`) of one request, without a WSGI server."""

    def __init__(self, body: bytes, bounds) -> None:
        self.content_type = "application/json"
        self.body = RequestBody({"wsgi.input": BytesIO(body), "CONTENT_LENGTH": str(len(body))}, bounds)

    def json_object(self) -> dict:
        return read_json_object(self.body, self.content_type)

    def watch(self, *, watch_client: bool = True) -> DisconnectWatch:
        return DisconnectWatch()


def test_a_stream_relayed_with_no_request_context(upstream):
    config = proxy_config(upstream)
    relay = Relay(config, Router(config), Upstream(), build_pipeline(config))
    upstream.enqueue(sse_reply([chat_chunk("<think>hm</think>"), chat_chunk("Hello", finish="stop")]))
    body = orjson.dumps({"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    ex = Exchange(
        request_id="r1",
        family="chat",
        method="POST",
        path="chat/completions",
        headers={"content-type": "application/json", "x-request-id": "r1"},
    )
    reply = relay.handle(FAMILY, ex, lambda: HandMadeClient(body, config.bounds))
    assert reply.status == 200 and reply.streamed
    out = b"".join(reply.body)
    assert b"Hello" in out and b"hm" not in out and out.endswith(b"data: [DONE]\n\n")
    relay.done(ex)
    assert ex.outcome.finished_at is not None and ex.outcome.bytes_out == len(out)
    assert upstream.last.json()["messages"] == [{"role": "user", "content": "hi"}]

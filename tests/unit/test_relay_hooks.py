"""The relay's per-attempt hooks (`attempt`, `resend`, `error_json`) and `Exchange.cancel`,
through the real app against the fake upstream; the steps are real `Transform`s added to
the app's pipeline."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
import requests

from app import create_app
from app.exchange import Exchange
from app.transforms import Pipeline, Transform
from tests.fakes.openai_upstream import chat_chunk, json_reply, sse_reply
from tests.support import LiveServer, proxy_config

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


class SpeakCompletions(Transform):
    """Sends a chat request as a completions one, and back to chat after a 404 (like a translator)."""

    name = "speak"

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []
        self.fell_back = False

    def attempt(self, ex: Exchange) -> None:
        self.seen.append((ex.api, ex.family, ex.path))
        if not self.fell_back:
            ex.family, ex.path = "completions", "completions"
            ex.body = {"model": ex.body["model"], "prompt": "hi"}

    def resend(self, ex: Exchange, status: int) -> bool:
        if status == 404 and not self.fell_back:
            self.fell_back = True
            return True
        return False

    def error_json(self, ex: Exchange, status: int, data: Any) -> Any:
        return {"wrapped": data, "status": status}


def app_with(upstream, *steps: Transform, last: bool = False):
    app = create_app(proxy_config(upstream))
    relay = app.extensions["cot_proxy.relay"]
    relay.pipeline = Pipeline([*relay.pipeline.transforms, *steps] if last else [*steps, *relay.pipeline.transforms])
    return app


def test_attempt_changes_what_is_sent(upstream):
    step = SpeakCompletions()
    r = app_with(upstream, step).test_client().post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 200
    assert upstream.last.path == "/v1/completions"
    assert upstream.last.json() == {"model": "m", "prompt": "hi"}
    assert step.seen == [("chat", "chat", "chat/completions")]


def test_resend_restores_the_client_request(upstream):
    step = SpeakCompletions()
    upstream.enqueue(json_reply({"error": {"message": "no such route"}}, status=404))
    r = app_with(upstream, step).test_client().post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 200
    assert [rec.path for rec in upstream.requests] == ["/v1/completions", "/v1/chat/completions"]
    assert upstream.last.json() == CHAT  # the client's body, untouched by the first attempt
    assert step.seen == [("chat", "chat", "chat/completions")] * 2


def test_resend_happens_once_and_errors_pass_error_json(upstream):
    step = SpeakCompletions()
    step.fell_back = True  # resend would say no: the 404 goes back through error_json
    upstream.enqueue(json_reply({"error": {"message": "gone"}}, status=404))
    r = app_with(upstream, step).test_client().post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 404
    assert r.get_json() == {"wrapped": {"error": {"message": "gone"}}, "status": 404}
    assert len(upstream.requests) == 1


class Catch(Transform):
    name = "catch"

    def __init__(self) -> None:
        self.exchanges: list[Exchange] = []
        self.admitted = threading.Event()

    def admit(self, ex: Exchange) -> None:
        self.exchanges.append(ex)
        self.admitted.set()


@pytest.mark.parametrize("stream", [True, False])
def test_cancel_closes_the_upstream_and_ends_the_request(upstream, stream):
    catch = Catch()
    live = LiveServer(app_with(upstream, catch))
    try:
        if stream:
            upstream.enqueue(sse_reply([chat_chunk("tick")], endless=True, delay=0.05))
        else:
            upstream.enqueue(json_reply({"never": "sent"}, hang=True))
        result: dict[str, Any] = {}

        def call() -> None:
            r = requests.post(
                live.url + "/v1/chat/completions", json={**CHAT, "stream": stream}, timeout=20, stream=True
            )
            result["status"] = r.status_code
            result["body"] = r.content

        client = threading.Thread(target=call)
        client.start()
        assert upstream.arrived.wait(10)
        if stream:  # the stream has started: the client has had events
            deadline = time.monotonic() + 10
            while catch.exchanges[0].outcome.bytes_out == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert catch.exchanges[0].outcome.bytes_out > 0
        cancelled_at = time.monotonic()
        catch.exchanges[0].cancel()
        assert upstream.disconnected.wait(5)
        assert upstream.disconnected_at - cancelled_at < 1.0
        client.join(10)
        assert not client.is_alive()
        ex = catch.exchanges[0]
        if stream:
            assert result["status"] == 200
            last = [line for line in result["body"].split(b"\n") if line.startswith(b"data: ")][-1]
            assert json.loads(last[6:])["error"]["code"] == "cancelled"
            assert ex.outcome.error == "cancelled"
        else:
            assert result["status"] == 503
            assert json.loads(result["body"])["error"]["code"] == "cancelled"
    finally:
        live.stop()


class OwnEnd(Transform):
    """Ends a stream its own way, as a translating step does: no `[DONE]` for its clients."""

    name = "own_end"

    def stream_event(self, ex: Exchange, event):
        return () if event.is_done else (event,)

    def stream_end(self, ex: Exchange):
        from app.sse import Event

        return (Event.from_json({"the": "end"}),)


def test_done_passes_the_stream_steps_after_stream_end(upstream):
    upstream.enqueue(sse_reply([chat_chunk("hi", finish="stop")]))
    body = (
        app_with(upstream, OwnEnd(), last=True)
        .test_client()
        .post("/v1/chat/completions", json={**CHAT, "stream": True})
        .get_data()
    )
    assert body.endswith(b'data: {"the":"end"}\n\n') and b"[DONE]" not in body


def test_an_abort_after_close_leaves_the_pooled_connection_alone(upstream):
    """The connection of a closed reply goes back to the pool: a late cancel must not cut the call
    that reuses it."""
    from app.upstream import Call, Target, Upstream

    client, target = Upstream(), Target(base_url=upstream.base_url)
    call = Call()
    client.send(target, "GET", target.url("models"), {}, None, call=call).read_all(1 << 20)
    upstream.reset()
    upstream.enqueue(json_reply({"ok": True}, before_first=0.5))
    late = threading.Thread(target=lambda: upstream.arrived.wait(10) and call.abort())
    late.start()  # the operator's cancel of the first call, while the second waits on the same connection
    second = client.send(target, "GET", target.url("models"), {}, None)
    late.join(10)
    assert second.status == 200 and second.read_all(1 << 20) == b'{"ok": true}'

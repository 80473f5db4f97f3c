"""A step (transform) that raises something other than a ProxyError never leaks.

The broken step is a real `Transform` added to the app's real pipeline; it breaks
only when the request asks it to (header `x-break: <hook>`), so the same app then
shows whether slots, gauges and backend counts came back.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import replace

import pytest

from app import create_app
from app.access.settings import AccessSettings
from app.exchange import Exchange
from app.sse import Event
from app.transforms import Pipeline, Transform
from tests.fakes.openai_upstream import chat_chunk, sse_reply
from tests.support import proxy_config

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


class Broken(Transform):
    name = "broken"

    def __init__(self) -> None:
        self.done_calls: Counter[str] = Counter()

    def _maybe(self, ex: Exchange, hook: str) -> None:
        if ex.headers.get("x-break") == hook:
            raise RuntimeError(f"bug in {hook}")

    def admit(self, ex: Exchange) -> None:
        self._maybe(ex, "admit")

    def request(self, ex: Exchange) -> None:
        self._maybe(ex, "request")

    def response_headers(self, ex: Exchange, status: int, headers: dict[str, str]) -> None:
        self._maybe(ex, "response_headers")

    def stream_event(self, ex: Exchange, event: Event) -> Iterable[Event]:
        self._maybe(ex, "stream_event")
        return (event,)

    def done(self, ex: Exchange) -> None:
        self.done_calls[ex.request_id] += 1
        self._maybe(ex, "done")


@pytest.fixture
def broken_app(upstream):
    access = AccessSettings.from_env({"MAX_CONCURRENT_REQUESTS": "2", "QUEUE_TIMEOUT_SECONDS": "0.2"})
    app = create_app(replace(proxy_config(upstream), access=access))
    relay = app.extensions["cot_proxy.relay"]
    broken = Broken()
    steps = list(relay.pipeline.transforms)
    steps.insert(len(steps) - 2, broken)  # among the fixes, before the observers
    relay.pipeline = Pipeline(steps)
    return app, broken


def metric(client, name: str, **labels: str) -> float:
    text = client.get("/metrics").get_data(as_text=True)
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        m = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
    return total


@pytest.mark.parametrize("hook", ["admit", "request", "response_headers"])
def test_a_step_that_raises_gives_500_and_frees_every_slot(broken_app, hook):
    app, broken = broken_app
    client = app.test_client()
    upstream_errors = metric(client, "cot_proxy_upstream_errors_total")
    in_flight = metric(client, "cot_proxy_requests_in_flight", route="chat")  # the gauge is per process
    for _ in range(4):  # twice the concurrency limit: a leak would leave no slot
        resp = client.post("/v1/chat/completions", json=CHAT, headers={"x-break": hook}, buffered=True)
        assert resp.status_code == 500
        assert resp.get_json()["error"]["code"] == "internal_error"
        assert "bug in" not in resp.get_data(as_text=True)  # no internals in the answer
    resp = client.post("/v1/chat/completions", json=CHAT, buffered=True)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert metric(client, "cot_proxy_requests_in_flight", route="chat") == in_flight
    router = app.extensions["cot_proxy.router"]
    assert all(b.in_flight == 0 for p in router.providers.values() for b in p.backends)
    assert set(broken.done_calls.values()) == {1}  # done exactly once per request
    assert metric(client, "cot_proxy_upstream_errors_total") == upstream_errors


def test_a_stream_step_that_raises_ends_the_stream_with_one_internal_error(broken_app, upstream):
    app, broken = broken_app
    client = app.test_client()
    upstream_errors = metric(client, "cot_proxy_upstream_errors_total")
    internal = metric(client, "cot_proxy_request_errors_total", kind="internal_error")
    in_flight = metric(client, "cot_proxy_requests_in_flight", route="chat")
    upstream.enqueue(sse_reply([chat_chunk("a"), chat_chunk("b", finish="stop")]))
    resp = client.post(
        "/v1/chat/completions", json={**CHAT, "stream": True}, headers={"x-break": "stream_event"}, buffered=True
    )
    body = resp.get_data(as_text=True)
    assert resp.status_code == 200
    errors = [line for line in body.splitlines() if '"error"' in line]
    assert len(errors) == 1 and "internal_error" in errors[0]
    # Counted as ours, not as a failure of the upstream's provider.
    assert metric(client, "cot_proxy_upstream_errors_total") == upstream_errors
    assert metric(client, "cot_proxy_request_errors_total", kind="internal_error") == internal + 1
    assert metric(client, "cot_proxy_requests_in_flight", route="chat") == in_flight
    assert set(broken.done_calls.values()) == {1}
    for _ in range(3):
        assert client.post("/v1/chat/completions", json=CHAT, buffered=True).status_code == 200


def test_a_done_hook_that_raises_does_not_stop_the_others(broken_app):
    app, broken = broken_app
    client = app.test_client()
    in_flight = metric(client, "cot_proxy_requests_in_flight", route="chat")
    for _ in range(4):
        resp = client.post("/v1/chat/completions", json=CHAT, headers={"x-break": "done"}, buffered=True)
        assert resp.status_code == 200
    assert client.post("/v1/chat/completions", json=CHAT, buffered=True).status_code == 200  # slots came back
    assert metric(client, "cot_proxy_requests_in_flight", route="chat") == in_flight

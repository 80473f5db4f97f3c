"""The webhook sink's one outbound call, at unit level with `responses` (no server needed):
what it sends and how it reports a refusal."""

from __future__ import annotations

import json

import pytest
import responses

from app.observability.sinks import WebhookSink

URL = "https://hooks.example.test/cot"


@responses.activate
def test_posts_the_record_as_json():
    responses.post(URL, status=204)
    WebhookSink(URL).handle({"request_id": "r1", "usage": {"total_tokens": 7}})
    (call,) = responses.calls
    assert json.loads(call.request.body) == {"request_id": "r1", "usage": {"total_tokens": 7}}
    assert call.request.headers["Content-Type"] == "application/json"
    assert call.request.headers["User-Agent"] == "cot-proxy"


@responses.activate
def test_an_error_status_is_a_failure_the_sink_queue_counts():
    responses.post(URL, status=503)
    with pytest.raises(RuntimeError, match="503"):
        WebhookSink(URL).handle({"request_id": "r2"})

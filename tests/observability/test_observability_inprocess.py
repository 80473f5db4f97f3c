"""Observability in one process (the threaded test server): the dead webhook, drops,
learned model labels, text and DEBUG logs, user sinks, and configuration errors."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import replace

import pytest
import requests
from prometheus_client import REGISTRY

from app import create_app
from app.config import Config, ConfigError
from app.observability.observer import Observer
from app.observability.settings import ObservabilitySettings
from tests.fakes.openai_upstream import FakeUpstream
from tests.observability import sink_fixture
from tests.observability.helpers import Blackhole
from tests.support import LiveServer, proxy_config

MSG = [{"role": "user", "content": "hi"}]


def _observer(app) -> Observer:
    return next(t for t in app.extensions["cot_proxy.relay"].pipeline.transforms if isinstance(t, Observer))


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _chat(url: str, model: str = "m", stream: bool = False, **extra) -> requests.Response:
    r = requests.post(
        url + "/v1/chat/completions",
        json={"model": model, "messages": MSG, "stream": stream, **extra},
        headers={"Authorization": "Bearer sk-test-0123456789-wxyz"},
        timeout=10,
    )
    _ = r.content
    return r


def test_dead_webhook_never_delays_requests_and_drops_when_full(upstream: FakeUpstream):
    hole = Blackhole()
    settings = ObservabilitySettings(webhook_url=hole.url, webhook_timeout=60.0, queue_size=2)
    app = create_app(proxy_config(upstream, observability=settings))
    webhook = _observer(app).sinks[0]
    server = LiveServer(app)
    dropped_before = _value("cot_proxy_completion_sink_dropped_total", sink="webhook")
    try:
        assert _chat(server.url).status_code == 200
        assert hole.accepted.wait(10), "the webhook was never called"
        # The sender is now inside handle(), waiting on a server that never answers (60 s).
        for i in range(8):
            t0 = time.monotonic()
            assert _chat(server.url, stream=i % 2 == 0).status_code == 200
            assert time.monotonic() - t0 < 2.0
        deadline = time.monotonic() + 5
        while webhook.dropped < 6 and time.monotonic() < deadline:
            time.sleep(0.01)  # the last record is submitted just after the client got its last byte
        assert webhook.handled == 0 and webhook.failed == 0  # still stuck on the first record
        assert webhook.queue.qsize() == 2  # the bounded queue is full ...
        assert webhook.dropped == 6  # ... and the rest was dropped and counted
        assert _value("cot_proxy_completion_sink_dropped_total", sink="webhook") - dropped_before == 6
    finally:
        server.stop()
        hole.close()  # the sender fails, counts it and moves on


def test_learned_models_become_labels_random_ones_do_not(upstream: FakeUpstream):
    server = LiveServer(create_app(proxy_config(upstream)))
    try:
        other = _value("cot_proxy_requests_total", route="chat", model="other", provider="default", status="200")
        assert _chat(server.url, "fake-model").status_code == 200  # not listed yet
        assert requests.get(server.url + "/v1/models", timeout=10).status_code == 200  # lists fake-model
        learned = _value("cot_proxy_requests_total", route="chat", model="fake-model", provider="default", status="200")
        assert _chat(server.url, "fake-model").status_code == 200
        random_name = f"rand-{uuid.uuid4().hex}"
        assert _chat(server.url, random_name).status_code == 200
        text = requests.get(server.url + "/metrics", timeout=10).text
    finally:
        server.stop()
    assert (
        _value("cot_proxy_requests_total", route="chat", model="fake-model", provider="default", status="200")
        == learned + 1
    )
    assert (
        _value("cot_proxy_requests_total", route="chat", model="other", provider="default", status="200") == other + 2
    )
    assert random_name not in text


def test_text_log_format_and_debug_bodies_mask_secrets(upstream: FakeUpstream, capfd):
    config = replace(proxy_config(upstream, observability=ObservabilitySettings(log_format="text")), debug=True)
    server = LiveServer(create_app(config))
    try:
        rid = f"text-{uuid.uuid4().hex}"
        r = requests.post(
            server.url + "/v1/chat/completions",
            timeout=10,
            json={"model": "m", "messages": MSG, "user": "u1", "api_key": "sk-body-secret-99887766"},
            headers={"Authorization": "Bearer sk-header-secret-11223344", "X-Request-ID": rid},
        )
        assert r.status_code == 200
        requests.get(server.url + "/healthz", timeout=10)
    finally:
        server.stop()
    err = capfd.readouterr().err
    line = next(x for x in err.splitlines() if rid in x and "cot_proxy.access" in x)
    assert f"[{rid}] cot_proxy.access: POST /v1/chat/completions 200" in line
    assert "status=200" in line and "model=m" in line and "key=…3344" in line and "latency_ms=" in line
    assert "request_body=" in line and "response_body=" in line and "Hello from upstream" in line
    assert "…7766" in line
    assert "sk-body-secret" not in err and "sk-header-secret" not in err


def test_user_sink_by_dotted_path(upstream: FakeUpstream):
    sink_fixture.RECORDS.clear()
    sink_fixture.ARRIVED.clear()
    settings = ObservabilitySettings(sinks=("tests.observability.sink_fixture:ListSink",))
    server = LiveServer(create_app(proxy_config(upstream, observability=settings)))
    try:
        assert _chat(server.url, "m", stream=False).status_code == 200
        assert sink_fixture.ARRIVED.wait(5)
    finally:
        server.stop()
    record = sink_fixture.RECORDS[0]
    assert record["request"]["messages"] == MSG
    assert record["response"]["choices"][0]["message"]["content"] == "Hello from upstream"
    assert record["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    assert record["stream"] is False and record["status"] == 200
    json.dumps(record)  # a record is plain JSON


def test_errors_are_counted_by_kind(upstream: FakeUpstream):
    server = LiveServer(create_app(proxy_config(upstream)))
    try:
        before = _value("cot_proxy_request_errors_total", route="chat", model="none", kind="invalid_json")
        up5 = _value("cot_proxy_upstream_errors_total", provider="default", kind="5xx")
        r = requests.post(
            server.url + "/v1/chat/completions", data=b"{", timeout=10, headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 400
        from tests.fakes.openai_upstream import json_reply

        upstream.enqueue(json_reply({"error": {"message": "boom"}}, status=500))
        assert _chat(server.url).status_code == 500
    finally:
        server.stop()
    assert _value("cot_proxy_request_errors_total", route="chat", model="none", kind="invalid_json") == before + 1
    assert _value("cot_proxy_upstream_errors_total", provider="default", kind="5xx") == up5 + 1
    assert _value("cot_proxy_backend_up", provider="default", backend=upstream.root) == 0


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"OBSERVABILITY_PORT": "eighty"}, "OBSERVABILITY_PORT"),
        ({"OBSERVABILITY_PORT": "70000"}, "OBSERVABILITY_PORT"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT"),
        ({"COMPLETION_WEBHOOK_URL": "ftp://x"}, "COMPLETION_WEBHOOK_URL"),
        ({"COMPLETION_QUEUE_SIZE": "0"}, "COMPLETION_QUEUE_SIZE"),
        ({"COMPLETION_SINKS": "not a path"}, "COMPLETION_SINKS"),
        ({"METRICS_ON_MAIN_PORT": "maybe"}, "METRICS_ON_MAIN_PORT"),
    ],
)
def test_bad_settings_name_the_variable(env, variable):
    with pytest.raises(ConfigError, match=variable):
        Config.from_env(env)


def test_unloadable_user_sink_stops_start_up(upstream: FakeUpstream):
    settings = ObservabilitySettings(sinks=("tests.observability.no_such_module:Sink",))
    with pytest.raises(ValueError, match="COMPLETION_SINKS"):
        create_app(proxy_config(upstream, observability=settings))


def test_metrics_can_be_left_off_the_main_port(upstream: FakeUpstream):
    client = create_app(proxy_config(upstream, observability=ObservabilitySettings(metrics_on_main_port=False)))
    assert client.test_client().get("/metrics").status_code == 404

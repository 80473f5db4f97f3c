"""Observability under real Gunicorn: 4 gevent workers, metrics summed over them, the
metrics-only port, the JSON view, one JSON log line per request, the JSONL sink, a dead
webhook, and bounded model labels."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest
import requests

from tests.fakes.openai_upstream import FakeUpstream, Recorded, Reply, _default_reply, chat_chunk, sse_reply
from tests.observability.helpers import Blackhole, samples, total
from tests.support import Gunicorn, free_port

CLIENT_KEY = "sk-client-SECRET-abcdefgh-9f3e"
UPSTREAM_KEY = "sk-upstream-SECRET-zyxwvuts-77aa"
MSG = [{"role": "user", "content": "hi"}]
N = 40


@pytest.fixture(scope="module")
def webhook() -> Iterator[Blackhole]:
    hole = Blackhole()
    yield hole
    hole.close()


@pytest.fixture(scope="module")
def proxy(module_upstream: FakeUpstream, webhook: Blackhole, tmp_path_factory) -> Iterator[Gunicorn]:
    tmp = tmp_path_factory.mktemp("obs")
    metrics_port = free_port()
    multiproc = tmp / "multiproc"
    multiproc.mkdir()
    (multiproc / "counter_1.db").write_bytes(b"stale")  # a previous run's file: must be wiped at start
    g = Gunicorn(
        {
            "PROMETHEUS_MULTIPROC_DIR": str(multiproc),
            "TARGET_BASE_URL": module_upstream.base_url,
            "UPSTREAM_API_KEY": UPSTREAM_KEY,
            "LLM_PARAMS": "model=sum-model;model=fake-model",
            "THINK_MODE": "separate",
            "OBSERVABILITY_PORT": str(metrics_port),
            "OBSERVABILITY_HOST": "127.0.0.1",
            "COMPLETION_LOG_FILE": str(tmp / "completions.jsonl"),
            "COMPLETION_WEBHOOK_URL": webhook.url,
            "COMPLETION_WEBHOOK_TIMEOUT_SECONDS": "60",
            "REQUEST_TIMEOUT_SECONDS": "20",
        },
        tmp / "gunicorn.log",
        workers=4,
    )
    g.metrics_port = metrics_port
    g.multiproc = multiproc
    g.jsonl = tmp / "completions.jsonl"
    yield g
    g.stop()


@pytest.fixture
def up(module_upstream: FakeUpstream) -> FakeUpstream:
    module_upstream.reset()
    return module_upstream


def _slow_default(rec: Recorded) -> Reply:
    """The fake's usual answer, a little late, so concurrent requests spread over workers."""
    return replace(_default_reply(rec), before_first=0.15)


def _chat(url: str, model: str, stream: bool = False, request_id: str | None = None) -> requests.Response:
    headers = {"Authorization": f"Bearer {CLIENT_KEY}"}
    if request_id:
        headers["X-Request-ID"] = request_id
    r = requests.post(
        url + "/v1/chat/completions",
        json={"model": model, "messages": MSG, "stream": stream},
        headers=headers,
        timeout=30,
    )
    _ = r.content  # read it all: the request is done only after the last byte
    return r


def test_counts_are_summed_over_four_workers(proxy: Gunicorn, up: FakeUpstream):
    up.responder = _slow_default
    ids = [f"sum-{i}-{uuid.uuid4().hex[:8]}" for i in range(N)]
    with ThreadPoolExecutor(max_workers=N) as pool:
        statuses = list(pool.map(lambda i: _chat(proxy.url, "sum-model", i % 2 == 0, ids[i]).status_code, range(N)))
    assert statuses == [200] * N

    text = requests.get(proxy.url + "/metrics", timeout=10).text
    assert total(text, "cot_proxy_requests_total", model="sum-model") == N
    assert (
        total(text, "cot_proxy_requests_total", model="sum-model", route="chat", status="200", provider="default") == N
    )
    assert total(text, "cot_proxy_request_duration_seconds_count", model="sum-model") == N
    assert total(text, "cot_proxy_time_to_first_byte_seconds_count", model="sum-model") == N // 2
    assert total(text, "cot_proxy_tokens_total", model="sum-model", type="prompt") == 3 * N
    assert total(text, "cot_proxy_requests_in_flight") == 0
    assert total(text, "cot_proxy_streams_in_flight") == 0

    # The requests really were served by several processes, and each logged its own line.
    served_by = {line["pid"] for line in proxy.lines() if line.get("request_id") in ids}
    assert len(served_by) >= 2, f"all {N} requests went to one worker; the sum proves nothing"


def test_json_view_sums_workers(proxy: Gunicorn, up: FakeUpstream):
    r = requests.get(proxy.url + "/metrics", headers={"Accept": "application/json"}, timeout=10)
    assert r.headers["content-type"].startswith("application/json")
    view = r.json()
    assert set(view) >= {
        "request_count",
        "error_count",
        "total_latency_ms",
        "avg_latency_ms",
        "prompt_tokens",
        "completion_tokens",
        "streams_active",
        "by_model",
    }
    model = view["by_model"]["sum-model"]
    assert model["request_count"] == N
    assert model["error_count"] == 0
    assert model["prompt_tokens"] == 3 * N
    assert model["completion_tokens"] == 3 * (N // 2) + 4 * (N // 2)  # streams report 3, bodies 4
    assert model["total_latency_ms"] > 0
    assert model["avg_latency_ms"] == pytest.approx(model["total_latency_ms"] / N, rel=1e-3)
    assert view["request_count"] >= N
    assert view["streams_active"] == 0


def test_separate_metrics_port(proxy: Gunicorn):
    base = f"http://127.0.0.1:{proxy.metrics_port}"
    text = requests.get(base + "/metrics", timeout=10).text
    assert total(text, "cot_proxy_requests_total", model="sum-model") == N
    view = requests.get(base + "/metrics", headers={"Accept": "application/json"}, timeout=10).json()
    assert view["by_model"]["sum-model"]["request_count"] == N
    assert requests.get(base + "/metrics?format=json", timeout=10).json()["by_model"]["sum-model"]["request_count"] == N


def test_one_json_log_line_per_request(proxy: Gunicorn, up: FakeUpstream):
    ids = [f"log-{uuid.uuid4().hex}" for _ in range(4)]
    for i, rid in enumerate(ids):
        assert _chat(proxy.url, "fake-model", stream=i % 2 == 1, request_id=rid).status_code == 200
    bad = f"log-bad-{uuid.uuid4().hex}"
    r = requests.post(
        proxy.url + "/v1/chat/completions",
        data=b"not json",
        timeout=10,
        headers={"Content-Type": "application/json", "X-Request-ID": bad},
    )
    assert r.status_code == 400

    deadline = time.monotonic() + 10
    while True:  # the line is written just after the last byte went out
        lines = [line for line in proxy.lines() if line.get("logger") == "cot_proxy.access"]
        by_id = {rid: [line for line in lines if line.get("request_id") == rid] for rid in [*ids, bad]}
        if all(by_id.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for i, rid in enumerate(ids):
        assert len(by_id[rid]) == 1, rid
        line = by_id[rid][0]
        assert line["level"] == "INFO"
        assert line["method"] == "POST" and line["path"] == "/v1/chat/completions" and line["route"] == "chat"
        assert line["status"] == 200
        assert isinstance(line["latency_ms"], float) and line["latency_ms"] > 0
        assert isinstance(line["ttfb_ms"], float) and 0 < line["ttfb_ms"] <= line["latency_ms"]
        assert line["stream"] is (i % 2 == 1)
        assert line["model"] == "fake-model"
        assert line["provider"] == "default"
        assert line["backend"] == up.root
        assert line["prompt_tokens"] == 3 and line["total_tokens"] in (6, 7)
        assert line["client"] == "127.0.0.1"
        assert line["key"] == "…" + CLIENT_KEY[-4:]
        assert line["error"] is None
        time.strptime(line["time"][:19], "%Y-%m-%dT%H:%M:%S")
    refused = by_id[bad]
    assert len(refused) == 1 and refused[0]["status"] == 400 and refused[0]["error"] == "invalid_json"
    # Gunicorn's own lines are JSON too, and no secret was ever written.
    assert any(line.get("logger") == "gunicorn.error" for line in proxy.lines())
    output = proxy.log_path.read_text()
    assert CLIENT_KEY not in output and UPSTREAM_KEY not in output
    assert CLIENT_KEY[:-4] not in output and UPSTREAM_KEY[:-4] not in output


def _wait_for_record(path, request_id: str) -> dict:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if path.exists():
            for raw in path.read_text().splitlines():
                record = json.loads(raw)  # every line is a whole JSON object
                if record["request_id"] == request_id:
                    return record
        time.sleep(0.05)  # the file sink writes from its own background worker
    raise AssertionError(f"no completion record for {request_id}")


def test_jsonl_sink_reassembles_a_stream_exactly(proxy: Gunicorn, up: FakeUpstream):
    usage = {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14}
    events = [
        chat_chunk(role="assistant", content=""),
        chat_chunk("<think>Let me "),
        chat_chunk("think.</think>"),
        chat_chunk("The answer"),
        chat_chunk(" is 42."),
        chat_chunk(
            tool_calls=[
                {"index": 0, "id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": ""}}
            ]
        ),
        chat_chunk(tool_calls=[{"index": 0, "function": {"arguments": '{"q": '}}]),
        chat_chunk(tool_calls=[{"index": 0, "function": {"arguments": '"x"}'}}]),
        chat_chunk(
            tool_calls=[
                {"index": 1, "id": "call_2", "type": "function", "function": {"name": "other", "arguments": "{}"}}
            ]
        ),
        chat_chunk(finish="tool_calls"),
        {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": "fake-model",
            "choices": [],
            "usage": usage,
        },
    ]
    up.enqueue(sse_reply(events, splits=[30, 200, 201, 450, 900]))
    rid = f"jsonl-{uuid.uuid4().hex}"
    body = {"model": "fake-model", "messages": MSG, "stream": True, "temperature": 0.5}
    r = requests.post(
        proxy.url + "/v1/chat/completions",
        json=body,
        timeout=30,
        headers={"Authorization": f"Bearer {CLIENT_KEY}", "X-Request-ID": rid},
    )
    assert r.status_code == 200

    # What the client got, put together independently of the proxy's reassembler.
    content, reasoning = "", ""
    for raw in r.text.split("\n\n"):
        if raw.startswith("data: {"):
            for choice in json.loads(raw[6:])["choices"]:
                content += choice["delta"].get("content") or ""
                reasoning += choice["delta"].get("reasoning_content") or ""
    assert (content, reasoning) == ("The answer is 42.", "Let me think.")

    record = _wait_for_record(proxy.jsonl, rid)
    assert record["response"] == {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "fake-model",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "The answer is 42.",
                    "reasoning_content": "Let me think.",
                    "tool_calls": [
                        {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "x"}'}},
                        {"id": "call_2", "type": "function", "function": {"name": "other", "arguments": "{}"}},
                    ],
                },
                "finish_reason": "tool_calls",
            }
        ],
        "usage": usage,
    }
    assert record["request"] == body  # as the client sent it, before any transform
    assert record["usage"] == usage and record["stream"] is True and record["status"] == 200
    assert record["model"] == "fake-model" and record["provider"] == "default"
    assert record["client"] == {"address": "127.0.0.1", "key": "…" + CLIENT_KEY[-4:]}
    assert record["timings"]["duration_ms"] >= record["timings"]["ttfb_ms"] > 0
    assert CLIENT_KEY not in proxy.jsonl.read_text() and UPSTREAM_KEY not in proxy.jsonl.read_text()


def test_dead_webhook_never_holds_requests(proxy: Gunicorn, up: FakeUpstream, webhook: Blackhole):
    # Earlier tests' records went to the webhook, which accepted and never answers:
    # each worker's webhook sender is stuck (60 s timeout) right now.
    assert webhook.accepted.wait(10), "no record ever reached the webhook"
    assert len(webhook.connections) >= 1
    started = time.monotonic()
    for i in range(10):
        t0 = time.monotonic()
        assert _chat(proxy.url, "fake-model", stream=i % 2 == 0).status_code == 200
        assert time.monotonic() - t0 < 5.0  # the fake answers in milliseconds; the webhook waits 60 s
    assert time.monotonic() - started < 20.0
    text = requests.get(proxy.url + "/metrics", timeout=10).text
    assert total(text, "cot_proxy_completion_sink_errors_total", sink="webhook") == 0  # still waiting, not failed


def test_model_labels_stay_bounded(proxy: Gunicorn, up: FakeUpstream):
    before = requests.get(proxy.url + "/metrics", timeout=10).text
    names = [f"rand-{uuid.uuid4().hex}" for _ in range(30)]
    with ThreadPoolExecutor(max_workers=10) as pool:
        assert set(pool.map(lambda m: _chat(proxy.url, m).status_code, names)) == {200}
    # Counted in the done hook, after the last byte went out: the scrape may come first, so poll (bounded).
    deadline = time.monotonic() + 10
    while True:
        after = requests.get(proxy.url + "/metrics", timeout=10).text
        grew = total(after, "cot_proxy_requests_total", model="other") - total(
            before, "cot_proxy_requests_total", model="other"
        )
        if grew >= 30 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not any(name in after for name in names)
    assert grew == 30
    models = {labels["model"] for labels, _ in samples(after, "cot_proxy_requests_total")}
    assert models <= {"sum-model", "fake-model", "other", "none"}


def test_a_dead_workers_counts_stay_and_its_live_gauges_go(proxy: Gunicorn, up: FakeUpstream):
    assert not (proxy.multiproc / "counter_1.db").exists()
    before = total(requests.get(proxy.url + "/metrics", timeout=10).text, "cot_proxy_requests_total")
    victim = next(line["pid"] for line in proxy.lines() if line.get("request_id", "").startswith("sum-"))
    live = proxy.multiproc / f"gauge_livesum_{victim}.db"
    assert live.exists()
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while live.exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # the master reaps the worker, then child_exit removes its live gauges
    assert not live.exists()
    text = requests.get(proxy.url + "/metrics", timeout=10).text
    assert total(text, "cot_proxy_requests_total") == before  # the dead worker's requests still count
    assert total(text, "cot_proxy_requests_total", model="sum-model") == N
    assert total(text, "cot_proxy_requests_in_flight") == 0

"""think_prefilled=auto under real Gunicorn, with the openai SDK as the client.

Default configuration (THINK_MODE=strip, nothing per model): the first stream of a model whose
template pre-fills `<think>` does not leak its reasoning, and what was learned reaches the other
replica through Redis (REDIS_URL) and the other workers through PROMETHEUS_MULTIPROC_DIR.
Redis: TEST_REDIS_URL (default redis://127.0.0.1:6379/15), each test with its own REDIS_PREFIX;
absent, the Redis test is skipped locally and fails under CI=true.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import requests

from tests.fakes.openai_upstream import FakeUpstream, chat_chunk, sse_reply
from tests.support import TEST_REDIS_URL, Gunicorn, redis_or_skip

MODEL = "deepseek-r1-distill-qwen-7b"
MSG = [{"role": "user", "content": "2+2?"}]
SHORT = ["deep", " thoughts", " here", "</think>", "  The", " answer", " is", " 4."]
N = 8
LONG = [f"step {i}: still thinking about it. " for i in range(60)] + ["</think>", "\n\nThe answer is 4."]


def reply(pieces: list[str], **kw: float):
    return sse_reply(
        [chat_chunk(role="assistant", content=""), *(chat_chunk(p) for p in pieces), chat_chunk(finish="stop")], **kw
    )


def streamed(url: str, request_id: str | None = None) -> str:
    sdk = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0, timeout=20)
    headers = {"X-Request-ID": request_id} if request_id else None
    chunks = sdk.chat.completions.create(model=MODEL, messages=MSG, stream=True, extra_headers=headers)
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


@pytest.fixture
def up(module_upstream: FakeUpstream) -> FakeUpstream:
    module_upstream.reset()
    return module_upstream


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    client = redis_or_skip()
    prefix = f"cot-proxy-test:{uuid.uuid4().hex[:12]}:"
    yield prefix
    client.delete(prefix + "think-prefill")
    client.close()


def test_first_stream_does_not_leak_and_the_other_replica_knows(up, redis_prefix):
    env = {
        "TARGET_BASE_URL": up.base_url,
        "REDIS_URL": TEST_REDIS_URL,
        "REDIS_PREFIX": redis_prefix,
        "REQUEST_TIMEOUT_SECONDS": "20",
    }
    one, two = Gunicorn(env, workers=1), None
    try:
        two = Gunicorn(env, workers=1)
        up.enqueue(reply(SHORT))
        assert streamed(one.url) == "The answer is 4.", "first stream of an unknown model, default config"
        meta = requests.get(two.url + "/v1/metadata", timeout=10).json()["reasoning"]["think_prefill"]
        assert meta["store"] == "redis"
        assert [(m["model"], m["prefilled"]) for m in meta["models"]] == [(MODEL, True)]
        # Far longer than the hold: only knowing the model keeps it from leaking.
        up.enqueue(reply(LONG))
        assert streamed(two.url) == "The answer is 4.", "the other replica knows the model"
        metrics = requests.get(one.url + "/metrics", timeout=10).text
        assert 'cot_proxy_think_prefill_learned_total{model="other",prefilled="true"} 1.0' in metrics
    finally:
        log_one = one.stop()
        log_two = two.stop() if two is not None else ""
    assert log_one.count(f"think: model '{MODEL}' pre-fills the start tag") == 1
    assert "pre-fills the start tag" not in log_two, "learned once, by the replica that saw it"


def test_workers_of_one_replica_share_through_the_metrics_directory(up):
    g = Gunicorn({"TARGET_BASE_URL": up.base_url, "REQUEST_TIMEOUT_SECONDS": "20"}, workers=2)
    try:
        up.enqueue(reply(SHORT))
        assert streamed(g.url) == "The answer is 4."
        # Concurrent, a little late, so they spread over both workers; none has asked about the model.
        ids = [f"prefill-{i}-{uuid.uuid4().hex[:8]}" for i in range(N)]
        up.enqueue(*(reply(LONG, before_first=0.2) for _ in ids))
        with ThreadPoolExecutor(max_workers=N) as pool:
            answers = list(pool.map(lambda rid: streamed(g.url, rid), ids))
        assert answers == ["The answer is 4."] * N
        meta = requests.get(g.url + "/v1/metadata", timeout=10).json()["reasoning"]["think_prefill"]
        assert meta["store"] == "file" and meta["models"][0]["model"] == MODEL
        served_by = {line["pid"] for line in g.lines() if line.get("request_id") in ids}
        assert len(served_by) >= 2, f"all {N} streams went to one worker; that proves nothing"
    finally:
        g.stop()

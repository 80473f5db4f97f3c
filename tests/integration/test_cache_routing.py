"""cache_aware through real Gunicorn (2 workers, each with its own state) in front of three
fake servers that keep a prefix cache and report `usage.prompt_tokens_details.cached_tokens`.

Hit rate and balance are measured over real HTTP, against round_robin on the same workload,
and again with `REDIS_URL` set (shared ejections on; each worker still routes on its own).
The answers are instant, so in-flight counts say nothing: balance comes from the share cap.
bench/routing_sim.py replays this shape (`gunicorn`) over many seeds.
"""

from __future__ import annotations

import json
import random
import threading
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.fakes.openai_upstream import FakeUpstream, Recorded, Reply, json_reply
from tests.support import TEST_REDIS_URL, Gunicorn, redis_or_skip

GROUPS, PER_GROUP, SYSTEM_CHARS, QUESTION_CHARS = 12, 6, 4000, 300
CACHE_BLOCKS = 400  # 25,600 characters per server: round robin (every group everywhere) must evict


class CachingServer:
    """A FakeUpstream answering chat with a vLLM-like prefix cache: 64-character blocks
    (16 tokens), each id chained over the text before it, LRU-evicted."""

    def __init__(self) -> None:
        self.fake = FakeUpstream().start()
        self.cache: OrderedDict[int, None] = OrderedDict()
        self.lock = threading.Lock()
        self.fake.responder = self.answer

    def reset(self) -> None:
        self.fake.reset()
        self.fake.responder = self.answer
        with self.lock:
            self.cache.clear()

    def answer(self, rec: Recorded) -> Reply | None:
        if rec.method != "POST" or not rec.path.endswith("/chat/completions"):
            return None  # model lists and the like: the fake's default answers
        body = rec.json()
        text = "".join(f"{m['role']}:{m['content']}\n" for m in body["messages"])
        data = text.encode()
        ids, value = [], 0
        for k in range(64, len(data) + 1, 64):
            value = zlib.crc32(data[k - 64 : k], value)
            ids.append(value | k << 32)
        with self.lock:
            hit = 0
            for block in ids:
                if block not in self.cache:
                    break
                hit += 1
            for block in ids:
                self.cache.pop(block, None)
                self.cache[block] = None
            while len(self.cache) > CACHE_BLOCKS:
                self.cache.popitem(last=False)
        prompt = len(data) // 4
        return json_reply(
            {
                "id": "x",
                "object": "chat.completion",
                "model": body.get("model", "m"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                "usage": {
                    "prompt_tokens": prompt,
                    "completion_tokens": 1,
                    "total_tokens": prompt + 1,
                    "prompt_tokens_details": {"cached_tokens": min(prompt, hit * 16)},
                },
            }
        )


@pytest.fixture(scope="module")
def caching_servers() -> Iterator[list[CachingServer]]:
    servers = [CachingServer() for _ in range(3)]
    yield servers
    for s in servers:
        s.fake.stop()


def workload(seed: int = 7) -> list[list[dict[str, str]]]:
    rng = random.Random(seed)

    def text(n: int) -> str:
        return "".join(rng.choice("abcdefghij klmnop") for _ in range(n))

    systems = [text(SYSTEM_CHARS) for _ in range(GROUPS)]
    out = [
        [{"role": "system", "content": systems[g]}, {"role": "user", "content": text(QUESTION_CHARS)}]
        for g in range(GROUPS)
        for _ in range(PER_GROUP)
    ]
    rng.shuffle(out)
    return out


def run(
    tmp_path: Path, servers: list[CachingServer], balance: str | None, env: dict[str, str] | None = None
) -> tuple[float, float, str]:
    for s in servers:
        s.reset()
    line = f"    balance: {balance}\n" if balance else ""
    config = tmp_path / f"config-{balance}.yaml"
    config.write_text(
        "providers:\n  pool:\n"
        + line
        + "    retries: 0\n    backends:\n"
        + "".join(f"      - base_url: {s.fake.base_url}\n" for s in servers)
    )
    g = Gunicorn(
        {"COT_PROXY_CONFIG": str(config), "REQUEST_TIMEOUT_SECONDS": "20", "METRICS_ENABLED": "true", **(env or {})},
        workers=2,
    )
    try:
        session = requests.Session()

        def send(messages: list[dict[str, str]]) -> dict:
            resp = session.post(g.url + "/v1/chat/completions", json={"model": "m", "messages": messages}, timeout=20)
            assert resp.status_code == 200, resp.text
            return resp.json()["usage"]

        with ThreadPoolExecutor(4) as pool:
            usages = list(pool.map(send, workload()))
        metrics = requests.get(g.url + "/metrics", timeout=10).text
    finally:
        g.stop()
    cached = sum(u["prompt_tokens_details"]["cached_tokens"] for u in usages)
    hit = cached / sum(u["prompt_tokens"] for u in usages)
    counts = [sum(1 for r in s.fake.requests if r.method == "POST") for s in servers]
    assert sum(counts) == GROUPS * PER_GROUP
    return hit, max(counts) / (sum(counts) / len(counts)), metrics


def test_cache_aware_beats_round_robin_over_real_http(tmp_path, caching_servers):
    hit, balance, metrics = run(tmp_path, caching_servers, None)  # the default with several backends
    rr_hit, rr_balance, _ = run(tmp_path, caching_servers, "round_robin")
    print(
        json.dumps(
            {"cache_aware": [round(hit, 3), round(balance, 2)], "round_robin": [round(rr_hit, 3), round(rr_balance, 2)]}
        )
    )
    # Ideal: one miss per group (hit ~ 5/6 x 4000/4300 = 0.78); round robin misses on each server.
    assert hit >= 0.5, hit
    assert hit >= rr_hit + 0.2, (hit, rr_hit)
    assert balance <= 1.5, balance
    # The per-backend hit metric: cached and prompt tokens by backend.
    lines = [m for m in metrics.splitlines() if m.startswith("cot_proxy_prefix_cache_tokens_total{")]
    backends = {m.split('backend="')[1].split('"')[0] for m in lines}
    assert backends <= {s.fake.root for s in caching_servers} and len(backends) >= 2, lines
    cached = sum(float(m.rsplit(" ", 1)[1]) for m in lines if 'type="cached"' in m)
    prompt = sum(float(m.rsplit(" ", 1)[1]) for m in lines if 'type="prompt"' in m)
    assert prompt > 0 and abs(cached / prompt - hit) < 0.05, (cached, prompt, hit)


def test_cache_aware_holds_with_redis_set(tmp_path, caching_servers):
    redis_or_skip()
    hit, balance, _ = run(tmp_path, caching_servers, None, {"REDIS_URL": TEST_REDIS_URL})
    print(json.dumps({"cache_aware_redis": [round(hit, 3), round(balance, 2)]}))
    assert hit >= 0.5, hit
    assert balance <= 1.5, balance

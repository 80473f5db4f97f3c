"""The store behind think_prefilled=auto: bounded, expiring, shared through a file or Redis; visible in
GET /v1/metadata, the log and cot_proxy_think_prefill_learned_total."""

from __future__ import annotations

import json
import logging
import socket
import uuid

import pytest

from app.transforms import prefill
from app.transforms.prefill import FilePrefillStore, PrefillStore, RedisPrefillStore, make_store
from tests.support import TEST_REDIS_URL, redis_or_skip


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_memory_store_learns_forgets_and_is_bounded():
    wall, mono = Clock(1_700_000_000.0), Clock()
    seen = []
    store = PrefillStore(max_models=3, ttl=100.0, wall=wall, clock=mono, on_learned=lambda m, p: seen.append((m, p)))
    assert store.get("a") is None
    assert store.learn("a", True) is True
    assert store.learn("a", True) is False, "a confirmation is no news"
    assert store.get("a") is True
    assert store.learn("a", False) is True and store.get("a") is False
    for name in "bcd":
        store.learn(name, True)
    assert store.get("a") is None, "least recently used, dropped past max_models"
    assert [e["model"] for e in store.known()] == ["d", "c", "b"]
    wall.now += 101
    assert store.get("b") is None and store.known() == [], "expired"
    assert seen == [("a", True), ("a", False), ("b", True), ("c", True), ("d", True)]
    assert store.learn(None, True) is False and store.learn("x" * 1000, True) is False
    assert store.get(None) is None


def test_learn_logs_once_per_model(caplog):
    store = PrefillStore()
    with caplog.at_level(logging.INFO, logger="cot_proxy.think"):
        for _ in range(5):
            store.learn("r1", True)
    lines = [r.getMessage() for r in caplog.records if "r1" in r.getMessage()]
    assert len(lines) == 1 and "pre-fills the start tag" in lines[0]


def test_a_stale_confirmation_is_written_again():
    wall = Clock(1_700_000_000.0)
    store = PrefillStore(wall=wall)
    store.learn("a", True)
    first = store.known()[0]["learned_at"]
    wall.now += prefill.CONFIRM_SECONDS + 1
    assert store.learn("a", True) is False
    assert store.known()[0]["learned_at"] > first, "renewed (its TTL starts again)"


def test_file_store_is_shared_by_workers(tmp_path):
    mono = Clock()
    one = FilePrefillStore(str(tmp_path), clock=mono)
    two = FilePrefillStore(str(tmp_path), clock=mono)
    assert two.get("r1") is None
    one.learn("r1", True)
    assert two.get("r1") is None, "an absence is trusted for SYNC_SECONDS"
    mono.now += prefill.SYNC_SECONDS
    assert two.get("r1") is True
    one.learn("r1", False)
    mono.now += prefill.SYNC_SECONDS
    assert two.get("r1") is False
    assert {e["model"] for e in two.known()} == {"r1"}
    data = json.loads((tmp_path / prefill.SHARED_FILE).read_text())
    assert data["r1"][0] is False


def test_file_store_is_bounded_and_survives_garbage(tmp_path):
    store = FilePrefillStore(str(tmp_path), max_models=5)
    for i in range(12):
        store.learn(f"m{i}", i % 2 == 0)
    data = json.loads((tmp_path / prefill.SHARED_FILE).read_text())
    assert len(data) == 5 and "m11" in data
    (tmp_path / prefill.SHARED_FILE).write_text("{not json")
    other = FilePrefillStore(str(tmp_path))
    assert other.get("m11") is None and other.known() == []
    (tmp_path / prefill.SHARED_FILE).write_text(json.dumps({"ok": [True, 1e12], "bad": "x", "worse": [1, 2]}))
    assert FilePrefillStore(str(tmp_path), wall=lambda: 1e12).get("ok") is True


def test_file_store_that_cannot_write_keeps_its_own_view(tmp_path):
    store = FilePrefillStore(str(tmp_path / "missing"))
    assert store.learn("r1", True) is True
    assert store.get("r1") is True


def test_make_store_picks_redis_then_file_then_memory(tmp_path):
    assert make_store("redis://127.0.0.1:1/0", "p:", 0.1, str(tmp_path)).kind == "redis"
    assert make_store(None, "p:", 0.1, str(tmp_path)).kind == "file"
    assert make_store(None, "p:", 0.1, None).kind == "memory"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_redis_keeps_the_local_view_and_skips_redis():
    mono = Clock()
    store = RedisPrefillStore(f"redis://127.0.0.1:{_closed_port()}/0", timeout=0.2, clock=mono)
    assert store.learn("r1", True) is True
    assert store.circuit.failures == 1
    assert store.get("r1") is True
    mono.now += prefill.SYNC_SECONDS
    assert store.get("r1") is True, "Redis skipped by its circuit: this worker's view stands"
    assert store.get("other") is None
    assert [e["model"] for e in store.known()] == ["r1"]


@pytest.fixture
def redis_url():
    client = redis_or_skip()
    prefix = f"cot-proxy-test:{uuid.uuid4().hex[:12]}:"
    yield TEST_REDIS_URL, prefix, client
    client.delete(prefix + "think-prefill")
    client.close()


def test_redis_store_is_shared_by_replicas(redis_url):
    url, prefix, client = redis_url
    mono = Clock()
    one = RedisPrefillStore(url, prefix, clock=mono)
    two = RedisPrefillStore(url, prefix, clock=mono)
    try:
        assert two.get("r1") is None
        one.learn("r1", True)
        mono.now += prefill.SYNC_SECONDS
        assert two.get("r1") is True
        two.learn("r1", False)
        mono.now += prefill.SYNC_SECONDS
        assert one.get("r1") is False
        assert [(e["model"], e["prefilled"]) for e in one.known()] == [("r1", False)]
        assert client.pttl(prefix + "think-prefill") > 0, "the key expires too"
    finally:
        one.client.close()
        two.client.close()


def test_redis_store_keeps_the_newest_max_models(redis_url):
    url, prefix, client = redis_url
    wall = Clock(1_700_000_000.0)
    store = RedisPrefillStore(url, prefix, max_models=4, wall=wall)
    try:
        for i in range(10):
            wall.now += 1
            store.learn(f"m{i}", i % 3 == 0)
        assert client.zcard(prefix + "think-prefill") == 4
        assert [e["model"] for e in store.known()] == ["m9", "m8", "m7", "m6"]
        assert store.known()[0]["prefilled"] is True and store.known()[1]["prefilled"] is False
    finally:
        store.client.close()


def test_learned_while_redis_was_away_is_shared_when_it_is_back(redis_url):
    url, prefix, client = redis_url
    mono = Clock()
    store = RedisPrefillStore(url, prefix, clock=mono)
    store.circuit.clock = mono
    try:
        store.circuit.failed(OSError("down"))  # Redis away: skipped for 1 s
        assert store.learn("r1", True) is True
        assert client.zscore(prefix + "think-prefill", "r1") is None, "not written while skipped"
        mono.now += prefill.SYNC_SECONDS
        assert store.get("r1") is True
        assert client.zscore(prefix + "think-prefill", "r1") is not None, "written once Redis answered"
    finally:
        store.client.close()


# -- visible: metadata and the metric ---------------------------------------------------------------------


def test_metadata_and_metric_show_what_was_learned(upstream):
    from app import create_app
    from app.observability import metrics
    from tests.fakes.openai_upstream import chat_chunk, sse_reply
    from tests.support import proxy_config

    app = create_app(proxy_config(upstream))
    c = app.test_client()
    meta = c.get("/v1/metadata").get_json()
    from app.model_params import HOLD_CHARS, HOLD_MS

    assert meta["reasoning"]["think_prefill"] == {
        "store": "memory",
        "hold_chars": HOLD_CHARS,
        "hold_ms": HOLD_MS,
        "hold_models": meta["reasoning"]["think_prefill"]["hold_models"],
        "models": [],
    }

    def learned() -> float:
        labels = {"model": "other", "prefilled": "true"}
        return metrics.REGISTRY.get_sample_value("cot_proxy_think_prefill_learned_total", labels) or 0.0

    before = learned()
    upstream.enqueue(sse_reply([chat_chunk("hm"), chat_chunk("</think>"), chat_chunk("4"), chat_chunk(finish="stop")]))
    body = c.post(
        "/v1/chat/completions",
        json={"model": "qwq-32b", "stream": True, "messages": [{"role": "user", "content": "2+2"}]},
    ).get_data()
    assert b"hm" not in body and b'"4"' in body
    models = c.get("/v1/metadata").get_json()["reasoning"]["think_prefill"]["models"]
    assert [(m["model"], m["prefilled"]) for m in models] == [("qwq-32b", True)]
    assert learned() == before + 1

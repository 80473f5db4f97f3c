"""The response store's bounds (items, bytes, TTL), owner scoping, and its three forms."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator

import pytest

from app.config import Config
from app.envparse import ConfigError
from app.translate.settings import StoreBounds
from app.translate.store import MemoryResponseStore, RedisResponseStore, ResponseStore, SharedFileStore, make_store
from tests.support import ROOT, TEST_REDIS_URL, redis_or_skip


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "file", "redis"])
def make(request, tmp_path) -> Iterator[Callable[..., ResponseStore]]:
    made: list[ResponseStore] = []
    prefix = f"cot-proxy-test:{uuid.uuid4().hex[:12]}:"

    def build(**kw) -> ResponseStore:
        if request.param == "memory":
            store: ResponseStore = MemoryResponseStore(**kw)
        elif request.param == "file":
            store = SharedFileStore(str(tmp_path), **kw)
        else:
            redis_or_skip()
            kw.pop("clock", None)  # Redis keeps its own time
            store = RedisResponseStore(TEST_REDIS_URL, prefix, 2.0, **kw)
        made.append(store)
        return store

    yield build
    if request.param == "redis":
        client = redis_or_skip()
        for key in client.scan_iter(prefix + "*"):
            client.delete(key)


def test_put_get_delete_scoped_to_owner(make):
    store = make()
    assert store.put("resp_1", "alice", {"response": {"id": "resp_1"}, "messages": [{"role": "user"}]})
    assert store.get("resp_1", "alice")["response"] == {"id": "resp_1"}
    assert store.get("resp_1", "bob") is None
    assert not store.delete("resp_1", "bob")
    assert store.delete("resp_1", "alice") and store.get("resp_1", "alice") is None


def test_too_large_is_not_kept(make):
    store = make(max_bytes=2048)
    assert not store.put("big", "a", {"response": {"text": "x" * 4096}})
    assert store.get("big", "a") is None


def test_item_cap_drops_least_recently_used(make, request):
    if "redis" in request.node.callspec.id:
        pytest.skip("Redis bounds records by TTL (and its own maxmemory policy), not by count")
    clock = Clock()
    store = make(max_items=3, clock=clock)
    for i in range(3):
        clock.now += 1
        store.put(f"r{i}", "a", {"n": i})
    clock.now += 1
    store.get("r0", "a")  # used: r1 is now the oldest
    clock.now += 1
    store.put("r3", "a", {"n": 3})
    assert [store.get(f"r{i}", "a") is not None for i in range(4)] == [True, False, True, True]


def test_byte_cap(make, request):
    if "redis" in request.node.callspec.id:
        pytest.skip("Redis bounds records by TTL")
    clock = Clock()
    store = make(max_bytes=3000, clock=clock)
    for i in range(5):
        clock.now += 1
        assert store.put(f"r{i}", "a", {"text": "y" * 1000})
    kept = [i for i in range(5) if store.get(f"r{i}", "a") is not None]
    assert kept == [3, 4]


def test_ttl(make, request):
    if "redis" in request.node.callspec.id:
        pytest.skip("Redis expiry is its own (SET EX); checked by test_redis_sets_the_ttl")
    clock = Clock()
    store = make(ttl=60, clock=clock)
    store.put("r", "a", {"n": 1})
    clock.now += 59
    assert store.get("r", "a") is not None
    clock.now += 2
    assert store.get("r", "a") is None


def test_redis_sets_the_ttl():
    client = redis_or_skip()
    prefix = f"cot-proxy-test:{uuid.uuid4().hex[:12]}:"
    store = RedisResponseStore(TEST_REDIS_URL, prefix, 2.0, ttl=120)
    store.put("r", "a", {"n": 1})
    try:
        assert 0 < client.ttl(prefix + "response:r") <= 120
    finally:
        client.delete(prefix + "response:r")


def test_redis_down_is_a_miss_not_an_error():
    store = RedisResponseStore("redis://127.0.0.1:1/0", "x:", 0.2)
    assert not store.put("r", "a", {"n": 1})
    assert store.get("r", "a") is None


def test_make_store_picks_the_form(tmp_path):
    assert make_store(StoreBounds(), None, "p:", 0.2, None).kind == "memory"
    assert make_store(StoreBounds(), None, "p:", 0.2, str(tmp_path)).kind == "file"
    assert make_store(StoreBounds(), "redis://127.0.0.1:6379/15", "p:", 0.2, str(tmp_path)).kind == "redis"
    bounds = Config.from_env({"RESPONSES_STORE_MAX_ITEMS": "5", "RESPONSES_STORE_TTL_SECONDS": "30"}).responses_store
    bounded = make_store(bounds, None, "p:", 0.2, None)
    assert (bounded.max_items, bounded.ttl) == (5, 30.0)


LAZY_SQLITE = """
import sys
from app.translate.settings import StoreBounds
from app.translate.store import make_store
store = make_store(StoreBounds(), None, "p:", 0.2, sys.argv[1])
before = "sqlite3" in sys.modules
assert store.put("r", "a", {"n": 1}) and store.get("r", "a") == {"owner": "a", "n": 1}
print(before, "sqlite3" in sys.modules)
"""


def test_sqlite_is_loaded_on_the_first_stored_response_not_at_start(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", LAZY_SQLITE, str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.split() == ["False", "True"]
    assert (tmp_path / "cot_proxy_responses.sqlite").exists()


def test_an_unusable_shared_file_keeps_responses_in_memory(tmp_path):
    (tmp_path / "cot_proxy_responses.sqlite").mkdir()  # a directory where the file should be
    store = make_store(StoreBounds(), None, "p:", 0.2, str(tmp_path))
    assert store.put("r", "a", {"n": 1})
    assert store.get("r", "a") == {"owner": "a", "n": 1}
    assert store.delete("r", "a") and store.get("r", "a") is None


def test_bad_bounds_stop_start_up_with_the_variable_named():
    with pytest.raises(ConfigError, match="RESPONSES_STORE_MAX_ITEMS"):
        Config.from_env({"RESPONSES_STORE_MAX_ITEMS": "lots"})

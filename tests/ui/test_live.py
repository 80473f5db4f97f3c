"""The live registry across workers: snapshots published on a shared channel (the instance's directory,
or Redis), cancels that reach the worker owning the request."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.exchange import Exchange
from app.ui import live
from app.ui.live import DirChannel, LiveRequests, RedisChannel
from tests.support import TEST_REDIS_URL, redis_or_skip


@pytest.fixture(params=["dir", "redis"])
def make_worker(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Builds registries standing for workers (several in one process) on one shared channel."""
    made: list[LiveRequests] = []
    if request.param == "dir":
        monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))

        def worker() -> LiveRequests:
            made.append(LiveRequests())
            return made[-1]

        yield worker
    else:
        client = redis_or_skip()
        prefix = f"cot-proxy-test:{uuid.uuid4().hex[:12]}:"

        def worker() -> LiveRequests:
            made.append(LiveRequests(TEST_REDIS_URL, prefix, 2.0))
            return made[-1]

        yield worker
        for key in client.scan_iter(match=prefix + "*"):
            client.delete(key)
        client.close()
    for w in made:
        w.stop()


def _exchange(rid: str) -> Exchange:
    return Exchange(
        request_id=rid,
        family="chat",
        method="POST",
        path="chat/completions",
        headers={"authorization": "Bearer sk-cp-abcdefghijklmnop1234"},
        body={"model": "m", "stream": True},
        client_model="m",
    )


def _poll(check: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:
        time.sleep(0.05)  # polling a condition with a deadline
    return check()


def test_a_cancel_reaches_the_worker_that_owns_the_request(make_worker: Any) -> None:
    ui_worker, owner = make_worker(), make_worker()
    owner.stop()  # no loop: this test takes the owner's turns by hand
    ex = _exchange("req-1")
    owner.admit(ex)
    owner._publish(owner.snapshot())
    entries = [e for s in ui_worker.snapshots() for e in s["live"]]
    assert [(e["request_id"], e["key"], e["model"], e["worker"]) for e in entries] == [
        ("req-1", "…1234", "m", owner.worker)
    ]
    assert "sk-cp-abcdefghijklmnop1234" not in json.dumps(ui_worker.snapshots())
    assert ui_worker.cancel(entries[0]["id"])
    owner.take_cancels()
    assert ex.cancelled
    owner.done(ex)
    owner._publish(owner.snapshot())
    assert [e for s in ui_worker.snapshots() for e in s["live"]] == []
    assert not ui_worker.cancel(entries[0]["id"])  # gone: 404 for the console
    for bad in ("x", "1-x", "../../etc-1", "", f"{owner.worker}-999"):
        assert not ui_worker.cancel(bad)


def test_the_loop_publishes_and_takes_cancels(make_worker: Any) -> None:
    ui_worker, owner = make_worker(), make_worker()
    ex = _exchange("req-2")
    owner.admit(ex)  # starts the owner's loop
    assert _poll(lambda: any(e["request_id"] == "req-2" for s in ui_worker.snapshots() for e in s["live"]))
    assert ui_worker.cancel(ex.state[owner.name])
    assert _poll(lambda: ex.cancelled)


def test_stale_snapshots_of_dead_workers_are_dropped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    ui_worker = LiveRequests()
    shared = tmp_path / live.SUBDIR
    ui_worker.snapshots()  # makes the directory
    dead = shared / "w-deadbeef.json"
    dead.write_text(
        json.dumps(
            {"pid": 999999999, "worker": "deadbeef", "written_at": time.time() - 60, "live": [{"id": "deadbeef-1"}]}
        )
    )
    (shared / "w-junk.json").write_text("{")
    assert [s["worker"] for s in ui_worker.snapshots()] == [ui_worker.worker]
    assert not dead.exists()
    assert isinstance(ui_worker.channel, DirChannel)


def test_redis_down_shows_this_worker_only() -> None:
    registry = LiveRequests("redis://127.0.0.1:1/0", "cot-proxy-test:", 0.2)  # nothing listens on port 1
    ex = _exchange("req-3")
    registry.admit(ex)
    try:
        assert isinstance(registry.channel, RedisChannel)
        assert [e["request_id"] for s in registry.snapshots() for e in s["live"]] == ["req-3"]
        assert registry.cancel(ex.state[registry.name]) and ex.cancelled  # its own: no channel needed
        assert not registry.cancel("0badc0de-1")
    finally:
        registry.stop()

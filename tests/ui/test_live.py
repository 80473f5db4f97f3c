"""The live registry across workers: snapshots in the shared directory, cancels that reach the owner."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from app.exchange import Exchange
from app.ui import live
from app.ui.live import LiveRequests


@pytest.fixture
def shared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    return tmp_path / live.SUBDIR


def _worker(pid: int) -> LiveRequests:
    registry = LiveRequests()
    registry.pid = pid  # two registries in one process stand for two workers
    return registry


def _exchange(rid: str) -> Exchange:
    return Exchange(request_id=rid, family="chat", method="POST", path="chat/completions",
                    headers={"authorization": "Bearer sk-cp-abcdefghijklmnop1234"},
                    body={"model": "m", "stream": True}, client_model="m")


def test_a_cancel_reaches_the_worker_that_owns_the_request(shared: Path) -> None:
    ui_worker, owner = _worker(os.getpid()), _worker(os.getppid())
    ex = _exchange("req-1")
    owner.admit(ex)
    owner._write(owner.snapshot())
    entries = [e for s in ui_worker.snapshots() for e in s["live"]]
    assert [(e["request_id"], e["key"], e["model"], e["pid"]) for e in entries] == [
        ("req-1", "…1234", "m", os.getppid())]
    assert "sk-cp-abcdefghijklmnop1234" not in (shared / f"w-{os.getppid()}.json").read_text()
    assert ui_worker.cancel(entries[0]["id"])
    assert not ex.cancelled  # not yet: the owner has not looked
    owner._take_cancels()
    assert ex.cancelled
    assert not list(shared.glob("cancel-*"))
    owner.done(ex)
    owner._write(owner.snapshot())
    assert [e for s in ui_worker.snapshots() for e in s["live"]] == []
    assert not ui_worker.cancel(entries[0]["id"])  # gone: 404 for the console
    for bad in ("x", "1-x", "../../etc-1", ""):
        assert not ui_worker.cancel(bad)


def test_stale_snapshots_of_dead_workers_are_dropped(shared: Path) -> None:
    ui_worker = _worker(os.getpid())
    shared.mkdir(parents=True, exist_ok=True)
    dead = shared / "w-999999999.json"
    dead.write_text(json.dumps({"pid": 999999999, "written_at": time.time() - 60, "live": [{"id": "999999999-1"}]}))
    (shared / "w-junk.json").write_text("{")
    assert [s["pid"] for s in ui_worker.snapshots()] == [os.getpid()]
    assert not dead.exists()


def test_the_loop_publishes_and_takes_cancels(shared: Path) -> None:
    owner = _worker(os.getpid())
    ex = _exchange("req-2")
    owner.admit(ex)  # starts the loop: the shared directory exists
    try:
        path = shared / f"w-{os.getpid()}.json"
        deadline = time.monotonic() + 10
        while not (path.exists() and "req-2" in path.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)  # polling the file with a deadline
        assert "req-2" in path.read_text()
        (shared / f"cancel-{ex.state[owner.name]}").write_text("")
        deadline = time.monotonic() + 10
        while not ex.cancelled and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ex.cancelled
    finally:
        owner.stop()

"""The usage spool (app/access/usage.py): a worker killed outright (SIGKILL) before it wrote its buffered
usage records leaves them in its spool file; the next writer started in that directory writes them to the
store, exactly once, also when the dead worker had written them already but not removed its spool; a running
writer also takes the spool of a worker that died after it started. A live writer's spool is never taken.
Real processes, a real SQLite key store, no mocks."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from app.access.keys import now_utc
from app.access.store import KeyStore
from app.access.usage import ORPHAN_SCAN_SECONDS, SPOOL_GLOB, UsageWriter
from tests.fleet.streams import wait_until
from tests.support import ROOT

# A worker: it records `n` usage records (never flushed: the flush interval is an hour), prints "ready",
# then waits to be killed.
WORKER = textwrap.dedent("""
    import sys, time
    from app.access.store import KeyStore
    from app.access.keys import now_utc
    from app.access.usage import UsageWriter
    store = KeyStore(sys.argv[1])
    writer = UsageWriter(store.add_usage, flush_seconds=3600, spool_dir=sys.argv[2])
    for i in range(int(sys.argv[3])):
        writer.record({"created_at": now_utc(), "request_id": f"spooled-{i}", "key_id": None, "key_name": "k",
                       "model": "m", "prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3, "status": 200})
    print("ready", flush=True)
    time.sleep(60)
""")


def killed_worker(db: str, spool: Path, n: int) -> None:
    """A worker process that spooled `n` records, then SIGKILLed: no atexit, no final flush."""
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKER, db, str(spool), str(n)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)


def rows(store: KeyStore) -> dict[str, int]:
    with store.engine.connect() as conn:
        got = conn.exec_driver_sql("SELECT request_id, count(*) FROM cot_usage GROUP BY request_id").all()
    return dict(got)


def test_records_of_a_sigkilled_worker_reach_the_store_once(tmp_path):
    db = f"sqlite:///{tmp_path / 'keys.db'}"
    spool = tmp_path / "spool"
    spool.mkdir()
    store = KeyStore(db)
    store.ensure_schema()
    killed_worker(db, spool, 5)
    assert rows(store) == {}, "nothing was flushed before the kill"
    [left] = glob.glob(str(spool / SPOOL_GLOB))
    successor = UsageWriter(store.add_usage, flush_seconds=0.05, spool_dir=str(spool))
    try:
        wait_until(lambda: len(rows(store)) == 5, 10, "the successor wrote the dead worker's records")
        assert rows(store) == {f"spooled-{i}": 1 for i in range(5)}
        assert successor.replayed == 5
        assert not os.path.exists(left)
    finally:
        successor.close()
    assert glob.glob(str(spool / SPOOL_GLOB)) == [], "a writer that flushed everything leaves no spool"
    store.close()


def test_records_already_written_before_the_kill_are_not_written_twice(tmp_path):
    db = f"sqlite:///{tmp_path / 'keys.db'}"
    spool = tmp_path / "spool"
    spool.mkdir()
    store = KeyStore(db)
    store.ensure_schema()
    killed_worker(db, spool, 3)
    # As if the worker had written its batch and died before removing its spool: the rows are there.
    [left] = glob.glob(str(spool / SPOOL_GLOB))
    from app.access.usage import Spool

    [(spooled, records)] = Spool.orphans(str(spool))
    store.add_usage([{k: v for k, v in r.items() if not k.startswith("_")} for r in records[:2]])
    spooled.f.close()  # unlocked: the successor takes it
    assert os.path.exists(left)
    successor = UsageWriter(store.add_usage, flush_seconds=0.05, spool_dir=str(spool))
    try:
        wait_until(lambda: not os.path.exists(left), 10, "the successor took the spool")
        assert rows(store) == {"spooled-0": 1, "spooled-1": 1, "spooled-2": 1}
    finally:
        successor.close()
    store.close()


def test_a_live_writers_spool_is_not_taken(tmp_path):
    db = f"sqlite:///{tmp_path / 'keys.db'}"
    store = KeyStore(db)
    store.ensure_schema()
    live = UsageWriter(store.add_usage, flush_seconds=3600, spool_dir=str(tmp_path))
    live.record({"created_at": now_utc(), "request_id": "live-1", "key_name": "k", "total_tokens": 1})
    other = UsageWriter(store.add_usage, flush_seconds=0.05, spool_dir=str(tmp_path))
    try:
        assert other.replayed == 0 and rows(store) == {}
        assert len(glob.glob(str(tmp_path / SPOOL_GLOB))) == 2  # one each
    finally:
        other.close()
        live.close()
    assert rows(store) == {"live-1": 1}
    assert glob.glob(str(tmp_path / SPOOL_GLOB)) == []
    store.close()


def test_a_running_writer_takes_spools_of_workers_that_died_after_it_started(tmp_path):
    db = f"sqlite:///{tmp_path / 'keys.db'}"
    store = KeyStore(db)
    store.ensure_schema()
    running = UsageWriter(store.add_usage, flush_seconds=0.05, spool_dir=str(tmp_path))
    running.record({"created_at": now_utc(), "request_id": "running-1", "key_name": "k", "total_tokens": 1})
    try:
        killed_worker(db, tmp_path, 2)  # e.g. a draining replica's worker killed at its graceful timeout
        wait_until(
            lambda: len(rows(store)) == 3, 3 * ORPHAN_SCAN_SECONDS, "the running writer took the spool", step=0.1
        )
        assert rows(store) == {"running-1": 1, "spooled-0": 1, "spooled-1": 1}
    finally:
        running.close()
    assert glob.glob(str(tmp_path / SPOOL_GLOB)) == []
    store.close()

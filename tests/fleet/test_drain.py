"""Graceful drain through real Gunicorn (gunicorn.conf.py, gevent, 2 workers) in front of the fake
upstream streaming slowly: on SIGTERM the replica fails readiness first (/readyz 503 `draining`, seen on
a connection opened before), closes its listeners (new connections refused), lets the in-flight stream
finish whole with [DONE], and the master exits 0 right after it. Worker recycling (max_requests with
jitter, on by default) never cuts a stream."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from tests.fakes.openai_upstream import FakeUpstream
from tests.fleet.streams import Stream, refused, slow_streams, wait_until
from tests.support import ROOT, Gunicorn, RawConnection

GRACEFUL = 15


@pytest.fixture
def drain_upstream() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


def readyz(conn: RawConnection) -> tuple[int, dict]:
    conn.send(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
    status, _, headers, _ = conn.read_head()
    return status, json.loads(b"".join(conn.iter_body(headers)))


def test_sigterm_fails_readiness_then_closes_listeners_and_lets_the_stream_finish(drain_upstream):
    slow_streams(drain_upstream, delay=0.15)  # 10 words: ~2 s
    g = Gunicorn(
        {
            "TARGET_BASE_URL": drain_upstream.base_url,
            "GUNICORN_GRACEFUL_TIMEOUT": str(GRACEFUL),
            "HEALTH_CACHE_SECONDS": "0",
        },
        workers=2,
    )
    try:
        with RawConnection(g.port) as probe:
            assert readyz(probe)[0] == 200  # a keep-alive connection, as a load balancer's
            s = Stream(g.url)
            assert s.status == 200
            s.first_event()
            reader = threading.Thread(target=s.rest, daemon=True)
            reader.start()
            term_at = time.monotonic()
            g.proc.send_signal(signal.SIGTERM)
            wait_until(lambda: refused(g.port), 5, "listeners closed after SIGTERM")
            status, body = readyz(probe)
            assert (status, body) == (503, {"status": "draining"})
        reader.join(GRACEFUL)
        assert not reader.is_alive()
        ended_at = time.monotonic()
        assert s.whole, s.events
        rc = g.proc.wait(timeout=GRACEFUL)
        exited_at = time.monotonic()
    finally:
        log = g.stop()
    assert rc == 0, log
    assert ended_at - term_at > 1.0, "the stream really was in flight across the shutdown"
    assert exited_at - ended_at < 3.0, "the master exits soon after the last stream, not at the graceful timeout"
    assert "draining: /readyz answers 503" in log
    assert "graceful timeout" not in log.lower()


def test_max_requests_default_is_on_with_jitter():
    code = (
        "import json, runpy; ns = runpy.run_path('gunicorn.conf.py'); "
        "print(json.dumps([ns['max_requests'], ns['max_requests_jitter']]))"
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [10000, 1000]


def test_worker_recycling_never_cuts_a_stream(drain_upstream):
    """max_requests 3 (+0..2 jitter) per worker: 36 streams, 3 at a time; workers recycle while others stream."""
    slow_streams(drain_upstream, delay=0.03)
    g = Gunicorn(
        {
            "TARGET_BASE_URL": drain_upstream.base_url,
            "GUNICORN_GRACEFUL_TIMEOUT": str(GRACEFUL),
            "GUNICORN_CMD_ARGS": "--max-requests 3 --max-requests-jitter 2",
        },
        workers=2,
    )
    results: list[Stream] = []
    lock = threading.Lock()

    def one() -> None:
        s = Stream(g.url).rest()
        with lock:
            results.append(s)

    try:
        for _ in range(12):
            batch = [threading.Thread(target=one, daemon=True) for _ in range(3)]
            for t in batch:
                t.start()
            for t in batch:
                t.join(30)
                assert not t.is_alive()
    finally:
        log = g.stop()
    assert len(results) == 36
    cut = [(s.status, s.events[-2:]) for s in results if not s.whole]
    assert not cut, cut
    recycles = log.count("Autorestarting worker after current request")
    assert recycles >= 3, log

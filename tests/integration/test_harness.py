"""bench/harness.py, which every real-Gunicorn test and benchmark stands on: ready means every worker
answers, and stop() does not wait out graceful_timeout for a replacement worker still booting."""

from __future__ import annotations

import os
import signal
import time

from bench.harness import has_own_signal_handlers
from tests.support import Gunicorn

GRACEFUL = 30


def test_ready_means_every_worker_answers():
    with Gunicorn({}, workers=2) as g:
        pids = set(g.worker_pids())
        assert len(pids) == 2
        assert all(has_own_signal_handlers(pid) for pid in pids)
        seen: set[int] = set()
        for _ in range(20):  # bounded: each round opens several connections at once
            seen |= g.answering(8)
            if seen == pids:
                break
        assert seen == pids


def test_stop_right_after_a_worker_died_does_not_wait_for_the_graceful_timeout():
    """The master forks a replacement at once; SIGTERM reaches it while it still runs the master's signal
    handlers, which lose it. Gunicorn alone would wait GRACEFUL s for that worker."""
    g = Gunicorn({"GUNICORN_GRACEFUL_TIMEOUT": str(GRACEFUL)}, workers=2)
    before = set(g.worker_pids())
    os.kill(min(before), signal.SIGKILL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not set(g.worker_pids()) - before:
        time.sleep(0.01)  # until the master has forked the replacement (bounded)
    started = time.monotonic()
    log = g.stop()
    took = time.monotonic() - started
    assert g.proc.returncode == 0, log
    assert took < GRACEFUL / 3, f"stop() took {took:.1f} s:\n{log}"

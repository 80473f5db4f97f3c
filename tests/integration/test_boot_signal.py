"""A worker still booting when the master gets SIGTERM: the master must not wait graceful_timeout for it.

Until `Worker.init_signals` a new worker runs the master's handlers, which only queue a signal in the
worker's copy of the master, so a SIGTERM then is lost (gunicorn.conf.py's post_fork ends such a worker).
SIGTTIN and SIGTERM sent together make the master fork a worker and signal it at once; each round has
some chance to hit the window, so several rounds are run."""

from __future__ import annotations

import signal
import subprocess
import time

from tests.support import Gunicorn

GRACEFUL = 20
ROUNDS = 5


def test_sigterm_while_a_worker_boots_does_not_wait_for_the_graceful_timeout():
    for _ in range(ROUNDS):
        g = Gunicorn({"GUNICORN_GRACEFUL_TIMEOUT": str(GRACEFUL)}, workers=1)
        try:
            g.proc.send_signal(signal.SIGTTIN)  # one more worker: forked when the master reads its queue...
            g.proc.send_signal(signal.SIGTERM)  # ... and told to stop right after
            sent = time.monotonic()
            try:
                g.proc.wait(GRACEFUL / 2)
            except subprocess.TimeoutExpired:
                pass
            took = time.monotonic() - sent
        finally:
            log = g.stop()
        assert g.proc.returncode == 0, log
        assert took < GRACEFUL / 2, f"the master waited {took:.1f} s for a worker that lost its SIGTERM:\n{log}"

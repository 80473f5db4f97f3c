"""app/disconnect.py under gevent (a subprocess, monkey-patched as a Gunicorn worker is): a client that
closes its socket ends the request's greenlet; one that sends more (pipelining) does not, and the
watch's hub callback raises nothing (it must not wait, nor refuse a peek)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = """
from gevent import monkey; monkey.patch_all()
import socket, gevent
from app.disconnect import DisconnectWatch
from app.errors import ClientDisconnected
a, b = socket.socketpair()
def victim():
    w = DisconnectWatch.start({"gunicorn.socket": a})
    try:
        gevent.sleep(0.5)
        return "stayed"
    except ClientDisconnected:
        return "killed"
    finally:
        w.stop()
g = gevent.spawn(victim); gevent.sleep(0.05); b.send(b"x"); print("pipelined", g.get(timeout=5))
a.recv(10)
g = gevent.spawn(victim); gevent.sleep(0.05); b.close(); print("closed", g.get(timeout=5))
"""


def test_closed_is_a_disconnect_and_pipelined_data_is_not():
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["pipelined", "stayed", "closed", "killed"], out.stderr
    assert "Traceback" not in out.stderr and "Error" not in out.stderr, out.stderr

"""Real processes and sockets for the observability tests: Gunicorn with its output
in a file (a pipe could fill up and stall it), and a webhook that never answers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Gunicorn:
    """`gunicorn -c gunicorn.conf.py cot_proxy:app` with its stdout and stderr in `log_path`."""

    def __init__(self, env: dict[str, str], log_path: Path, workers: int = 4) -> None:
        self.port = free_port()
        self.log_path = log_path
        full_env = {k: v for k, v in os.environ.items()
                    if k not in ("TARGET_BASE_URL", "BACKEND_URL", "PROMETHEUS_MULTIPROC_DIR", "COT_PROXY_CONFIG")}
        full_env.update({"HOST": "127.0.0.1", "PORT": str(self.port), "WEB_CONCURRENCY": str(workers), **env})
        self._out = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "cot_proxy:app"],
            cwd=ROOT, env=full_env, stdout=self._out, stderr=subprocess.STDOUT,
        )
        self.workers = workers
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("gunicorn exited: " + log_path.read_text(errors="replace"))
            if self._booted() >= workers and self._healthy():
                return
            time.sleep(0.1)  # polling for start-up, not synchronising a test
        self.stop()
        raise RuntimeError("gunicorn did not start within 60 s: " + log_path.read_text(errors="replace"))

    def _booted(self) -> int:
        """Workers that finished loading the app (each logs its observability set-up once)."""
        return len({line.get("pid") for line in self.lines() if line.get("message", "").startswith("observability:")})

    def _healthy(self) -> bool:
        try:
            return requests.get(self.url + "/healthz", timeout=5).status_code == 200
        except (requests.ConnectionError, requests.Timeout):
            return False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def lines(self) -> list[dict[str, Any]]:
        """Every JSON line of the output so far (other lines are skipped)."""
        out = []
        for raw in self.log_path.read_bytes().splitlines():
            try:
                obj = json.loads(raw)
            except ValueError:
                continue
            if isinstance(obj, dict):
                out.append(obj)
        return out

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._out.close()


class Blackhole:
    """A TCP listener that accepts connections and never answers (a dead webhook)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.accepted = threading.Event()
        self.connections: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections.append(conn)
            self.accepted.set()

    def close(self) -> None:
        self._closed = True
        for c in self.connections:
            try:
                c.close()
            except OSError:
                pass
        self.sock.close()


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of every sample called `name` in Prometheus text output."""
    out = []
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        labels: dict[str, str] = {}
        if "{" in head:
            body = head[head.index("{") + 1:head.rindex("}")]
            for part in _split_labels(body):
                k, _, v = part.partition("=")
                labels[k] = json.loads(v)
        out.append((labels, float(value)))
    return out


def _split_labels(body: str) -> list[str]:
    parts, cur, quoted, escaped = [], "", False, False
    for ch in body:
        if escaped:
            cur += ch
            escaped = False
        elif ch == "\\":
            cur += ch
            escaped = True
        elif ch == '"':
            cur += ch
            quoted = not quoted
        elif ch == "," and not quoted:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur:
        parts.append(cur)
    return parts


def total(text: str, name: str, **match: str) -> float:
    return sum(v for labels, v in samples(text, name) if all(labels.get(k) == m for k, m in match.items()))

"""Real processes for tests: free ports and the proxy under real Gunicorn.

Gunicorn's output goes to a file (a pipe could fill up and stall it).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]
# Variables of the developer's shell that would change what a test's proxy does.
ISOLATED = ("TARGET_BASE_URL", "BACKEND_URL", "PROMETHEUS_MULTIPROC_DIR", "COT_PROXY_CONFIG", "GATEWAY_URL",
            "OLLAMA_BASE_URL", "REDIS_URL", "GATEWAY_BEARER_TOKEN", "LLM_PARAMS")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Gunicorn:
    """`gunicorn -c gunicorn.conf.py cot_proxy:app` with its stdout and stderr in `log_path`."""

    def __init__(self, env: dict[str, str], log_path: Path | None = None, workers: int = 2) -> None:
        self.port = free_port()
        if log_path is None:
            log_path = Path(tempfile.mkstemp(prefix="cot-proxy-gunicorn-", suffix=".log")[1])
        self.log_path = log_path
        full_env = {k: v for k, v in os.environ.items() if k not in ISOLATED}
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
            # Every worker loaded (JSON logs say so), or at least one answering (text logs).
            if self._healthy() and (self._booted() >= workers or not self.lines()):
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

    def stop(self) -> str:
        """Stop it; return everything it printed."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._out.close()
        return self.log_path.read_text(errors="replace")


def failed_start(env: dict[str, str]) -> tuple[int, str]:
    """Start Gunicorn with `env` added, expecting it to refuse; (exit code, everything it printed)."""
    full_env = {k: v for k, v in os.environ.items() if k not in ISOLATED}
    full_env.update({"HOST": "127.0.0.1", "PORT": str(free_port()), **env})
    proc = subprocess.run([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "cot_proxy:app"],
                          cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=60)
    return proc.returncode, proc.stdout + proc.stderr

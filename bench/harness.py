"""The proxy under real Gunicorn, for the benchmarks and the test suite (tests/support.py re-exports it).

    from bench.harness import Gunicorn, free_port     # or `from harness import ...` inside bench/

    with Gunicorn({"TARGET_BASE_URL": url}, workers=2) as g:
        requests.get(g.url + "/v1/models")

`Gunicorn` runs `gunicorn -c gunicorn.conf.py cot_proxy:app` from the repository root with the caller's
environment minus `ISOLATED`, plus `env`; its stdout and stderr go to `log_path` (a pipe could fill up and
stall it). It is ready when every worker has answered `/livez`: the server is asked, and the kernel says
which worker holds each answered connection, so no log line's wording is involved. `stop()` is SIGTERM
with a bounded wait, and never stalls on a worker that lost its SIGTERM (see `Gunicorn.stop`).

Standard library only, so any benchmark or test can import it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
COMMAND = ["-m", "gunicorn", "-c", "gunicorn.conf.py", "cot_proxy:app"]
# Variables of the developer's shell that would change what a harnessed proxy does.
ISOLATED = (
    "TARGET_BASE_URL",
    "BACKEND_URL",
    "PROMETHEUS_MULTIPROC_DIR",
    "COT_PROXY_CONFIG",
    "GATEWAY_URL",
    "OLLAMA_BASE_URL",
    "REDIS_URL",
    "GATEWAY_BEARER_TOKEN",
    "LLM_PARAMS",
)
_SIGHUP_BIT = 1 << (signal.SIGHUP - 1)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def children(pid: int) -> list[int]:
    """Direct children of `pid` (from /proc; [] once it is gone)."""
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        pass  # a kernel without the children file: scan every process's parent
    except OSError:
        return []
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    kids.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return kids


def has_own_signal_handlers(worker: int) -> bool:
    """True once a Gunicorn worker replaced the master's signal handlers with its own.

    Between fork and `Worker.init_signals` a worker runs the master's handlers, which only queue a signal in
    the worker's copy of the master: a SIGTERM then is lost, and the master waits `graceful_timeout` for a
    worker that never heard it. The master catches SIGHUP; a worker resets it to the default."""
    try:
        for line in Path(f"/proc/{worker}/status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return not int(line.split()[1], 16) & _SIGHUP_BIT
    except (OSError, ValueError):
        pass
    return False


def _socket_inode(server_port: int, client_port: int) -> str | None:
    """The inode of the server's end of the local connection from `client_port` (/proc/net/tcp, tcp6)."""
    local, remote = f":{server_port:04X}", f":{client_port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            f = row.split()
            if len(f) > 9 and f[1].endswith(local) and f[2].endswith(remote) and f[9] != "0":
                return f[9]
    return None


def _holder(inode: str, pids: list[int]) -> int | None:
    """Which of `pids` has the socket `inode` open."""
    want = f"socket:[{inode}]"
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == want:
                    return pid
            except OSError:
                continue
    return None


class Gunicorn:
    """`gunicorn -c gunicorn.conf.py cot_proxy:app` on a free 127.0.0.1 port (or `env`'s PORT), `workers` workers.

    Waits until every worker answered (`wait=False`: call `wait_ready()` later, e.g. to start several at once).
    A context manager: `stop()` on exit."""

    def __init__(
        self,
        env: dict[str, str],
        log_path: Path | None = None,
        workers: int = 2,
        *,
        wait: bool = True,
        timeout: float = 60.0,
    ) -> None:
        self.port = int(env.get("PORT") or free_port())
        if log_path is None:
            log_path = Path(tempfile.mkstemp(prefix="cot-proxy-gunicorn-", suffix=".log")[1])
        self.log_path = log_path
        full_env = {k: v for k, v in os.environ.items() if k not in ISOLATED}
        full_env.update({"HOST": HOST, "WEB_CONCURRENCY": str(workers), **env, "PORT": str(self.port)})
        self.workers = int(full_env["WEB_CONCURRENCY"])
        self._out = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, *COMMAND],
            cwd=ROOT,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # stop() ends the whole group
        )
        if wait:
            self.wait_ready(timeout)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def __enter__(self) -> Gunicorn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def worker_pids(self) -> list[int]:
        """The master's children now: its workers (a replacement too, booted or not)."""
        return children(self.proc.pid)

    def answering(self, connections: int) -> set[int]:
        """Workers that answered /livez on `connections` connections opened at once (so several workers
        accept). Each request's head is sent but for its last CRLF, so the worker that accepted it holds
        the connection (a sync worker would close it after answering) until it is looked up."""
        socks: list[socket.socket] = []
        found: set[int] = set()
        try:
            for _ in range(connections):
                socks.append(socket.create_connection((HOST, self.port), timeout=5))
            for s in socks:
                s.sendall(b"GET /livez HTTP/1.1\r\nHost: harness\r\n")
            pids = self.worker_pids()
            holders: dict[socket.socket, int] = {}
            deadline = time.monotonic() + 2.0  # accepted within it by a worker that runs, or left to a next round
            while len(holders) < len(socks) and time.monotonic() < deadline:
                for s in socks:
                    inode = None if s in holders else _socket_inode(self.port, s.getsockname()[1])
                    pid = _holder(inode, pids) if inode else None
                    if pid is not None:
                        holders[s] = pid
                if len(holders) < len(socks):
                    time.sleep(0.02)  # polling the kernel's tables for the accepts, bounded by the deadline
            for s, pid in holders.items():
                s.sendall(b"\r\n")
                head = b""
                for _ in range(100):  # bounded: a head is a few hundred bytes
                    data = s.recv(4096)
                    head += data
                    if not data or b"\r\n\r\n" in head:
                        break
                if head.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")):
                    found.add(pid)
        except OSError:
            pass  # not listening yet, or a worker restarting: the next round asks again
        finally:
            for s in socks:
                s.close()
        return found

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until each of the master's `workers` children answered /livez; RuntimeError (with the log) if
        Gunicorn exits or `timeout` passes."""
        deadline = time.monotonic() + timeout
        seen: set[int] = set()
        rounds = 0
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._out.flush()
                raise RuntimeError(f"gunicorn exited with {self.proc.returncode}: " + self.output())
            pids = set(self.worker_pids())
            seen &= pids  # a worker that left no longer counts
            if len(pids) == self.workers:
                rounds += 1
                seen |= self.answering(2 * self.workers + min(rounds, 8))
                if seen == pids:
                    return
            time.sleep(0.05)  # polling for start-up, not synchronising a test
        self.stop()
        raise RuntimeError(
            f"gunicorn not ready ({self.workers} workers answering) within {timeout:.0f} s: " + self.output()
        )

    def output(self) -> str:
        """Everything it printed so far."""
        return self.log_path.read_text(errors="replace")

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

    def stop(self, timeout: float = 30.0) -> str:
        """SIGTERM (Gunicorn's graceful stop) and wait up to `timeout`; return everything it printed.

        A worker still booting when the master sends SIGTERM loses it (see `has_own_signal_handlers`) and
        the master would wait `graceful_timeout` for it. So each worker that had not installed its own
        handlers when the SIGTERM went out, or was forked after, gets one SIGTERM of ours once it has
        them. Past `timeout`, the process group is killed."""
        deadline = time.monotonic() + timeout
        heard: set[int] = set()  # workers sure to get the master's SIGTERM, or ours
        if self.proc.poll() is None:
            heard = {pid for pid in self.worker_pids() if has_own_signal_handlers(pid)}
            self.proc.terminate()
        while self.proc.poll() is None and time.monotonic() < deadline:
            for pid in self.worker_pids():
                if pid not in heard and has_own_signal_handlers(pid):
                    _signal(pid, signal.SIGTERM)
                    heard.add(pid)
            try:
                self.proc.wait(0.1)
            except subprocess.TimeoutExpired:
                pass
        if self.proc.poll() is None:
            _signal(-self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        else:
            _signal(-self.proc.pid, signal.SIGKILL)  # our own group: anything a worker left behind
        self._out.close()
        return self.output()


def _signal(pid: int, sig: int) -> None:
    """os.kill, or os.killpg for a negative pid; a process already gone is fine."""
    try:
        if pid < 0:
            os.killpg(-pid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass

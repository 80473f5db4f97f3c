"""Helpers for tests: the proxy under real Gunicorn (bench/harness.py, shared with the benchmarks), the app
on a live threaded server, a proxy Config, raw sockets, and the test Redis.

Test modules import helpers from here, never from a conftest.py (conftest files only declare fixtures).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import openai
from werkzeug.serving import make_server

from app.config import Config
from bench.harness import COMMAND, ISOLATED, ROOT, Gunicorn, children, free_port  # also for test modules
from tests.fakes.openai_upstream import FakeUpstream


def proxy_config(upstream: FakeUpstream, **changes: object) -> Config:
    """The app's Config relaying to `upstream`, short timeouts, no health cache; `changes` replace fields."""
    base = Config(target_base_url=upstream.base_url, connect_timeout=2.0, read_timeout=5.0, health_cache_seconds=0)
    return replace(base, **changes)


class LiveServer:
    """The app on a real threaded HTTP server on 127.0.0.1, for real clients."""

    def __init__(self, app) -> None:
        self._server = make_server("127.0.0.1", 0, app, threaded=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    def sdk(self, **kw: object) -> openai.OpenAI:
        kw.setdefault("max_retries", 0)
        kw.setdefault("timeout", 10.0)
        return openai.OpenAI(base_url=self.url + "/v1", api_key="sk-client-key", **kw)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def failed_start(env: dict[str, str]) -> tuple[int, str]:
    """Start Gunicorn with `env` added, expecting it to refuse; (exit code, everything it printed)."""
    full_env = {k: v for k, v in os.environ.items() if k not in ISOLATED}
    full_env.update({"HOST": "127.0.0.1", "PORT": str(free_port()), **env})
    proc = subprocess.run(
        [sys.executable, *COMMAND], cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=60
    )
    return proc.returncode, proc.stdout + proc.stderr


# -- raw HTTP, for what `requests` would normalise or refuse to send -----------------------------------


class RawResponse:
    """One HTTP/1.1 response read off a socket: status, lower-cased headers, body de-chunked but not decoded."""

    def __init__(
        self, status: int, reason: str, headers: list[tuple[str, str]], body: bytes, elapsed: float, interim: list[int]
    ) -> None:
        self.status = status
        self.reason = reason
        self.header_list = headers
        self.headers = {}
        for k, v in headers:
            key = k.lower()
            self.headers[key] = self.headers[key] + ", " + v if key in self.headers else v
        self.body = body
        self.elapsed = elapsed
        """Seconds from the last byte sent to the end of the response."""
        self.interim = interim
        """Statuses of 1xx responses seen before this one."""

    def json(self) -> Any:
        return json.loads(self.body)

    def error(self) -> dict[str, Any]:
        """The OpenAI error envelope's inner object (asserting its exact shape)."""
        err = self.json()["error"]
        assert set(err) == {"message", "type", "param", "code"}, err
        return err

    def __repr__(self) -> str:
        return f"<RawResponse {self.status} {self.headers.get('content-type')} {self.body[:300]!r}>"


class RawConnection:
    """A client socket to 127.0.0.1:`port` that writes exactly what it is given."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self._buf = b""
        self.timeout = timeout

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> bool:
        """Write; False if the server has already closed or reset the connection."""
        try:
            self.sock.sendall(data)
            return True
        except (BrokenPipeError, ConnectionResetError):
            return False

    def readable(self, seconds: float) -> bool:
        """True as soon as the server sent something (or closed) within `seconds`."""
        if self._buf:
            return True
        import select

        ready, _, _ = select.select([self.sock], [], [], seconds)
        return bool(ready)

    def _fill(self, deadline: float) -> bool:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no complete response in time")
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        self._buf += data
        return bool(data)

    def _line(self, deadline: float, limit: int = 65536) -> bytes:
        while b"\n" not in self._buf:
            if len(self._buf) > limit or not self._fill(deadline):
                raise ConnectionError(f"connection closed mid-line: {self._buf[:200]!r}")
        line, _, self._buf = self._buf.partition(b"\n")
        return line.rstrip(b"\r")

    def _exact(self, n: int, deadline: float) -> bytes:
        while len(self._buf) < n:
            if not self._fill(deadline):
                raise ConnectionError("connection closed mid-body")
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def read_head(self, timeout: float | None = None) -> tuple[int, str, list[tuple[str, str]], list[int]]:
        """Status, reason, headers of the next final response (1xx responses are skipped and listed)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        interim: list[int] = []
        for _ in range(20):
            status_line = self._line(deadline)
            parts = status_line.decode("latin-1").split(" ", 2)
            status = int(parts[1])
            headers: list[tuple[str, str]] = []
            for _ in range(500):
                line = self._line(deadline)
                if not line:
                    break
                k, _, v = line.decode("latin-1").partition(":")
                headers.append((k.strip(), v.strip()))
            if 100 <= status < 200:
                interim.append(status)
                continue
            return status, parts[2] if len(parts) > 2 else "", headers, interim
        raise ConnectionError("too many interim responses")

    def iter_body(
        self, headers: list[tuple[str, str]], timeout: float | None = None, limit: int = 64 * 1024 * 1024
    ) -> Iterator[bytes]:
        """The body's pieces as they arrive (de-chunked), until it ends, `limit` bytes, or the deadline."""
        deadline = time.monotonic() + (timeout or self.timeout)
        h = {k.lower(): v for k, v in headers}
        got = 0
        if "chunked" in h.get("transfer-encoding", "").lower():
            while got < limit:
                size = int(self._line(deadline).split(b";")[0], 16)
                if size == 0:
                    while self._line(deadline):  # trailers
                        pass
                    return
                data = self._exact(size, deadline)
                self._exact(2, deadline)
                got += size
                yield data
            return
        if "content-length" in h:
            left = int(h["content-length"])
            while left > 0:
                if not self._buf and not self._fill(deadline):
                    raise ConnectionError("connection closed mid-body")
                data, self._buf = self._buf[:left], self._buf[left:]
                left -= len(data)
                yield data
            return
        while got < limit:  # delimited by close
            if self._buf:
                data, self._buf = self._buf, b""
                got += len(data)
                yield data
            elif not self._fill(deadline):
                return

    def read_response(self, method: str = "GET", timeout: float | None = None) -> RawResponse:
        started = time.monotonic()
        status, reason, headers, interim = self.read_head(timeout)
        body = b""
        if method != "HEAD" and status not in (204, 304):
            body = b"".join(self.iter_body(headers, timeout))
        return RawResponse(status, reason, headers, body, time.monotonic() - started, interim)


def request_bytes(
    method: str,
    target: str,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    *,
    chunked: bool = False,
    port: int = 0,
) -> bytes:
    """A request exactly as given; `body` gets a Content-Length unless `chunked` (then one chunk) or a header says."""
    h = {"Host": f"127.0.0.1:{port}" if port else "127.0.0.1"}
    h.update(headers or {})
    lowered = {k.lower() for k in h}
    if body is not None and "content-length" not in lowered and "transfer-encoding" not in lowered:
        if chunked:
            h["Transfer-Encoding"] = "chunked"
        else:
            h["Content-Length"] = str(len(body))
    out = f"{method} {target} HTTP/1.1\r\n".encode("latin-1")
    out += b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in h.items()) + b"\r\n"
    if body is not None and chunked:
        out += (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
    elif body is not None:
        out += body
    return out


def raw_request(
    port: int,
    method: str,
    target: str,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    *,
    chunked: bool = False,
    timeout: float = 10.0,
) -> RawResponse:
    """One request on a fresh connection (`Connection: close`), the target byte for byte as given."""
    h = {"Connection": "close", **(headers or {})}
    with RawConnection(port, timeout) as conn:
        conn.send(request_bytes(method, target, h, body, chunked=chunked, port=port))
        return conn.read_response(method, timeout)


def sse_data(body: bytes) -> list[str]:
    """The `data:` values of an SSE body, in order."""
    out = []
    for block in body.replace(b"\r\n", b"\n").split(b"\n\n"):
        for line in block.split(b"\n"):
            if line.startswith(b"data:"):
                out.append(line[5:].strip().decode())
    return out


# -- processes ------------------------------------------------------------------------------------------


def worker_pids(g: Gunicorn) -> list[int]:
    """The pids of the Gunicorn master's children (its workers)."""
    return children(g.proc.pid)


def rss_bytes(pid: int) -> int:
    """Resident set size of `pid` (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
TEST_PG_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() == "true"


def unavailable(what: str) -> None:
    """Skip the test for want of `what` (a service or tool); fail it under CI=true, where it must be there."""
    import pytest

    if IN_CI:
        pytest.fail(f"{what} is required under CI=true")
    pytest.skip(f"{what} not reachable")


def redis_or_skip(url: str = TEST_REDIS_URL) -> Any:
    """A client of the test Redis; the test is skipped without one (fails under CI=true)."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError:
        unavailable(f"Redis at {url}")
    return client


def pg_url(schema: str) -> str:
    """TEST_PG_URL with `schema` first on the search path (one schema per test session or module)."""
    return f"{TEST_PG_URL}?options=-csearch_path%3D{schema}"


def guard_of(app):
    """The app's access guard (keys, limits, budgets, usage), or None."""
    from app.access.api import find_guard

    return find_guard(app)


class RedisServer:
    """A redis-server of our own on a free port, to stop and start (never the shared one)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.02)  # polling for start-up only
        self.stop()
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

"""Completion sinks: where finished requests' records go, off the request path.

A sink is any object with `handle(record: dict) -> None` (and optionally
`close()`); subclass `CompletionSink` or not. Each configured sink runs behind
its own bounded queue and background worker (`AsyncSink`): a request only
puts its record in the queue, never waits, and when the queue is full the
record is dropped, counted (`cot_proxy_completion_sink_dropped_total`) and logged.

Built in: `JsonlFileSink` (COMPLETION_LOG_FILE) and `WebhookSink`
(COMPLETION_WEBHOOK_URL). Yours: COMPLETION_SINKS=pkg.module:Class.

Every sink, built in or yours, gets the record with its secrets redacted
(`redact_record`, on the sink's worker): the value of any key, at any depth,
whose name looks like a credential (`api_key`, `Authorization`, `access_token`,
`password`, `client_secret`, ...) becomes "[redacted]", and so does a bearer token
anywhere in a string.
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import importlib
import logging
import os
import queue
import re
import threading
import time
from typing import Any

import orjson

from . import metrics

log = logging.getLogger("cot_proxy.observability")


REDACTED = "[redacted]"
# Names compared lower-cased with `-`, `_`, `.` and spaces removed: `X-Api-Key`, `api_key`, `apiKey` alike.
_SECRET_NAMES = frozenset(
    {
        "key",
        "token",
        "secret",
        "password",
        "passwd",
        "pwd",
        "auth",
        "bearer",
        "authorization",
        "cookie",
        "setcookie",
        "credential",
        "credentials",
        "sessionid",
        "jwt",
    }
)
_SECRET_SUFFIXES = (
    "apikey",
    "apikeys",
    "secretkey",
    "privatekey",
    "accesskey",
    "authkey",
    "token",
    "secret",
    "secrets",
    "password",
    "passwords",
    "passwd",
    "auth",
    "authorization",
    "credential",
    "credentials",
    "cookie",
)
_NAME_NOISE = re.compile(r"[-_.\s]")
# A whole value `Bearer <token>`, and one inside text when it looks like a token (a digit and
# 8+ characters, or 20+), so that prose such as "the bearer of bad news" stays.
_WHOLE_BEARER = re.compile(r"(?i)^\s*bearer\s+\S+\s*$")
_BEARER_IN_TEXT = re.compile(
    r"(?i)\b(bearer(?:\s+|%20|\+))((?=[A-Za-z0-9._~+/=-]*[0-9])[A-Za-z0-9._~+/=-]{8,}|[A-Za-z0-9._~+/=-]{20,})"
)
_MAX_DEPTH = 100


def secret_name(name: str) -> bool:
    """True for keys whose values are credentials (`api_key`, `Authorization`, `refresh-token`, ...)."""
    n = _NAME_NOISE.sub("", name.lower())
    return n in _SECRET_NAMES or n.endswith(_SECRET_SUFFIXES)


def redact(obj: Any, depth: int = 0) -> Any:
    """A copy of `obj` (decoded JSON) with secret-named values and bearer tokens replaced by "[redacted]".

    A dict or list under a secret name is searched rather than replaced (a JSON schema's property
    called `token` stays readable); a string, number or list of them under it is replaced. Past
    100 levels nothing can be checked, so nothing is kept."""
    if depth > _MAX_DEPTH:
        return REDACTED
    if isinstance(obj, dict):
        # A log-probability entry's `token` is a piece of text, not a credential.
        logprob = "logprob" in obj
        out = {}
        for k, v in obj.items():
            if (
                isinstance(k, str)
                and secret_name(k)
                and not (logprob and k == "token")
                and v is not None
                and not isinstance(v, (bool, dict))
                and not (isinstance(v, list) and any(isinstance(x, (dict, list)) for x in v))
            ):
                out[k] = REDACTED
            else:
                out[k] = redact(v, depth + 1)
        return out
    if isinstance(obj, (list, tuple)):
        return [redact(v, depth + 1) for v in obj]
    if isinstance(obj, str) and "bearer" in obj.lower():
        return REDACTED if _WHOLE_BEARER.match(obj) else _BEARER_IN_TEXT.sub(r"\1" + REDACTED, obj)
    return obj


def redact_record(record: dict[str, Any]) -> dict[str, Any]:
    """What a sink is given: `record` redacted, except `client.key`, which the proxy already
    reduced to the key's name or its last 4 characters."""
    out = redact(record)
    client = record.get("client")
    if isinstance(client, dict) and isinstance(out.get("client"), dict) and "key" in client:
        out["client"]["key"] = client["key"]
    return out


class CompletionSink:
    """Base for sinks; `handle` runs on the sink's own worker, one record at a time."""

    name = "sink"

    def handle(self, record: dict[str, Any]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release files or connections (called once at exit)."""


class JsonlFileSink(CompletionSink):
    """One JSON object per line, appended; rotated to `path.1` ... `path.N` past `max_bytes`.

    Several Gunicorn workers may write the same file: each line is one `write`
    on an O_APPEND descriptor (so lines never interleave), rotation happens under
    an `flock` on `path.lock`, and a worker whose file was rotated away reopens."""

    name = "file"

    def __init__(self, path: str, max_bytes: int = 100 * 1024 * 1024, backups: int = 5) -> None:
        self.path = os.path.abspath(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self._fd: int | None = None
        self._lock = threading.Lock()
        os.makedirs(os.path.dirname(self.path), exist_ok=True)

    def handle(self, record: dict[str, Any]) -> None:
        line = orjson.dumps(record, default=str) + b"\n"
        with self._lock:
            fd = self._current_fd()
            if self.max_bytes and os.fstat(fd).st_size + len(line) > self.max_bytes and os.fstat(fd).st_size:
                self._rotate()
                fd = self._current_fd()
            os.write(fd, line)

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    def _current_fd(self) -> int:
        """The open file, reopened when another process rotated or removed it."""
        if self._fd is not None:
            try:
                same = os.stat(self.path).st_ino == os.fstat(self._fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return self._fd
            os.close(self._fd)
        self._fd = self._open()
        return self._fd

    def _rotate(self) -> None:
        lock = os.open(self.path + ".lock", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if os.stat(self.path).st_size < self.max_bytes:
                    return  # another worker rotated it meanwhile
            except FileNotFoundError:
                return
            if self.backups <= 0:
                os.truncate(self.path, 0)
                return
            for i in range(self.backups - 1, 0, -1):
                src = f"{self.path}.{i}"
                if os.path.exists(src):
                    os.replace(src, f"{self.path}.{i + 1}")
            os.replace(self.path, self.path + ".1")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
            os.close(lock)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


class WebhookSink(CompletionSink):
    """POSTs each record as JSON. Failures are counted and logged; records are not retried."""

    name = "webhook"

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        import requests

        self.url = url
        self.timeout = timeout
        self.session = requests.Session()
        self.session.trust_env = False

    def handle(self, record: dict[str, Any]) -> None:
        resp = self.session.post(
            self.url,
            data=orjson.dumps(record, default=str),
            timeout=self.timeout,
            headers={"Content-Type": "application/json", "User-Agent": "cot-proxy"},
        )
        resp.close()
        if resp.status_code >= 400:
            raise RuntimeError(f"webhook answered {resp.status_code}")

    def close(self) -> None:
        self.session.close()


class AsyncSink:
    """A sink behind a bounded queue and one daemon worker (a greenlet under gevent)."""

    def __init__(self, sink: Any, name: str, queue_size: int) -> None:
        self.sink = sink
        self.name = name
        self.queue: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=queue_size)
        self.dropped = 0
        self.failed = 0
        self.handled = 0
        self._worker: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._pid = os.getpid()

    def submit(self, record: dict[str, Any]) -> bool:
        """Queue `record` for the worker; False (dropped and counted) when the queue is full."""
        self._ensure_worker()
        try:
            self.queue.put_nowait(record)
            return True
        except queue.Full:
            self.dropped += 1
            metrics.sink_dropped.labels(self.name).inc()
            if _worth_logging(self.dropped):
                log.warning("completion sink %s is behind: record dropped (%d so far)", self.name, self.dropped)
            return False

    def _ensure_worker(self) -> None:
        if self._worker is not None and self._pid == os.getpid():
            return
        with self._start_lock:
            if self._worker is None or self._pid != os.getpid():  # first use, or a forked child
                self._pid = os.getpid()
                self._worker = threading.Thread(target=self._run, name=f"cot-proxy-sink-{self.name}", daemon=True)
                self._worker.start()

    def _run(self) -> None:
        while True:
            record = self.queue.get()
            try:
                if record is None:
                    return
                self.sink.handle(redact_record(record))
                self.handled += 1
            except Exception as exc:
                self.failed += 1
                metrics.sink_errors.labels(self.name).inc()
                if _worth_logging(self.failed):
                    log.warning("completion sink %s failed (%d so far): %s", self.name, self.failed, _describe(exc))
            finally:
                self.queue.task_done()

    def drain(self, timeout: float) -> bool:
        """Wait up to `timeout` for queued records to be handled; True if all were."""
        deadline = time.monotonic() + timeout
        while self.queue.unfinished_tasks:
            if time.monotonic() >= deadline or self._worker is None:
                return False
            time.sleep(0.01)
        return True

    def close(self, timeout: float = 2.0) -> None:
        self.drain(timeout)
        close = getattr(self.sink, "close", None)
        if callable(close):
            try:
                close()
            except Exception:
                log.exception("closing completion sink %s failed", self.name)


def _worth_logging(n: int) -> bool:
    """Log the 1st, 10th, 100th, ... occurrence and every 1000th after: a stuck sink cannot flood logs."""
    return n in (1, 10, 100) or n % 1000 == 0


def _describe(exc: BaseException) -> str:
    """An exception without anything that may carry a URL's secret (requests puts the URL in messages)."""
    if isinstance(exc, OSError) and exc.errno in (errno.ECONNREFUSED, errno.ECONNRESET):
        return type(exc).__name__
    text = str(exc)
    return type(exc).__name__ + (f": {text[:200]}" if "://" not in text else "")


def load_sink_class(path: str) -> type:
    """`pkg.module:Class` or `pkg.module.Class` -> the class."""
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    module = importlib.import_module(module_name)
    return getattr(module, attr)


class SinkLoadError(ValueError):
    """A COMPLETION_SINKS entry cannot be imported or built."""


def build_sinks(settings: Any) -> list[AsyncSink]:
    """The configured sinks, each behind its own queue; closed (drained briefly) at exit."""
    sinks: list[AsyncSink] = []
    if settings.completion_log_file:
        sink = JsonlFileSink(
            settings.completion_log_file, settings.completion_log_max_bytes, settings.completion_log_backups
        )
        sinks.append(AsyncSink(sink, "file", settings.queue_size))
    if settings.webhook_url:
        sinks.append(
            AsyncSink(WebhookSink(settings.webhook_url, settings.webhook_timeout), "webhook", settings.queue_size)
        )
    for path in settings.sinks:
        try:
            cls = load_sink_class(path)
            sink = cls()
        except Exception as exc:
            raise SinkLoadError(f"COMPLETION_SINKS: cannot load {path!r}: {type(exc).__name__}: {exc}") from None
        if not callable(getattr(sink, "handle", None)):
            raise SinkLoadError(f"COMPLETION_SINKS: {path!r} has no handle(record) method")
        name = getattr(sink, "name", None)
        sinks.append(AsyncSink(sink, name if isinstance(name, str) and name != "sink" else path, settings.queue_size))
    for s in sinks:
        atexit.register(s.close)
    return sinks

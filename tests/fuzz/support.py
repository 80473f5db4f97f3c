"""What every fuzz test checks, the apps it runs against, and the failures known to remain.

The invariants (`problems`), for any request whatever:
- no status >= 500 made by the proxy. A relayed answer carries `x-cot-proxy-provider`; the
  fake upstream here answers 2xx (or 400 for bodies it cannot read), so any other 5xx is ours;
- every 4xx/5xx the proxy made is an OpenAI error envelope `{"error": {message, type, param, code}}`;
- every response header is one a WSGI server can send: Latin-1, no CR, LF or NUL
  (the test client does not check this; Gunicorn fails on it);
- a streamed body does not break while it is read (the caller reports that).

`KNOWN_FAILURES` lists the 5xx causes that lie outside the files the fuzz work owns, each with
the file that holds the cause. A failure that matches one is counted, not raised; its
reproducer in test_regressions.py is `xfail(strict=True)`, so fixing the cause turns that
test red until both the mark and the entry here are removed.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

import orjson

from app.access.settings import AccessSettings
from app.config import Config
from app.observability.settings import ObservabilitySettings
from tests.conftest import proxy_config
from tests.fakes.openai_upstream import FakeUpstream, Recorded, Reply, _default_reply, json_reply

PROVIDER_HEADER = "x-cot-proxy-provider"
TOKEN = "fuzz-gateway-token-0123456789"
ADMIN_TOKEN = "fuzz-admin-token-0123456789"
JWT_SECRET = "fuzz-jwt-secret-with-at-least-32-bytes!"
ENVELOPE_FIELDS = ("message", "type", "param", "code")

# -- apps ------------------------------------------------------------------------


def _quiet(config: Config) -> Config:
    """Warnings and errors only: thousands of access-log lines would cost more than the requests."""
    return replace(config, observability=ObservabilitySettings.from_env({"LOG_LEVEL": "warning"}))


def echo_config() -> Config:
    return _quiet(Config())


def relay_config(upstream: FakeUpstream) -> Config:
    return _quiet(proxy_config(upstream))


def auth_config(upstream: FakeUpstream, database_url: str) -> Config:
    """Every way in at once: fixed tokens, virtual keys (a real SQLite store), JWTs, the admin token."""
    access = AccessSettings.from_env({
        "GATEWAY_BEARER_TOKEN": TOKEN, "ADMIN_TOKEN": ADMIN_TOKEN, "VIRTUAL_KEYS": "true",
        "DATABASE_URL": database_url, "JWT_SECRET": JWT_SECRET, "USAGE_FLUSH_SECONDS": "0.2",
    })
    return replace(relay_config(upstream), access=access)


def _tolerant_reply(rec: Recorded) -> Reply:
    """The fake's usual answers; a body it cannot read gets a 400, as a real upstream would send."""
    try:
        return _default_reply(rec)
    except Exception as exc:
        return json_reply({"error": {"message": f"fake upstream cannot read this body: {type(exc).__name__}",
                                     "type": "invalid_request_error", "param": None, "code": None}}, status=400)


def prepare_upstream(upstream: FakeUpstream) -> FakeUpstream:
    """A fake upstream fit for thousands of requests: TCP_NODELAY on its listening socket (accepted
    sockets inherit it; otherwise Nagle and delayed ACKs cost 40 ms a request), tolerant answers."""
    upstream._server.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    upstream.responder = _tolerant_reply
    return upstream


def close_apps(*apps: Any) -> None:
    """Stop the usage writers and key stores the access guard opened."""
    from app.access.api import find_guard

    for app in apps:
        guard = find_guard(app)
        if guard is not None:
            guard.close()


class ErrorLog(logging.Handler):
    """The app's logged errors (with tracebacks), so a failure report can show where a 5xx came from."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
        self.records.append(text)

    def __enter__(self) -> ErrorLog:
        self.records.clear()
        logging.getLogger("cot_proxy").addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger("cot_proxy").removeHandler(self)

    def last(self) -> str:
        return self.records[-1] if self.records else "(nothing logged)"


# -- invariants ------------------------------------------------------------------


def _values(headers: Mapping[str, Any]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for name, value in headers.items():
        for v in value if isinstance(value, list) else [value]:
            out.append((name.lower(), v))
    return out


def header(headers: Mapping[str, Any], name: str) -> str | None:
    for k, v in _values(headers):
        if k == name:
            return v
    return None


def is_relayed(headers: Mapping[str, Any]) -> bool:
    return header(headers, PROVIDER_HEADER) is not None


def envelope_problem(body: bytes) -> str | None:
    """Why `body` is not an OpenAI error envelope, or None."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return f"error body is not JSON: {body[:200]!r}"
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return f"error body has no 'error' object: {body[:200]!r}"
    missing = [k for k in ENVELOPE_FIELDS if k not in error]
    if missing:
        return f"error envelope lacks {missing}: {body[:200]!r}"
    if not isinstance(error["message"], str) or not isinstance(error["type"], str):
        return f"error message/type are not strings: {body[:200]!r}"
    for k in ("param", "code"):
        if error[k] is not None and not isinstance(error[k], str):
            return f"error {k} is neither a string nor null: {body[:200]!r}"
    return None


def problems(status: int, headers: Mapping[str, Any], body: bytes) -> list[str]:
    """Every invariant this response breaks (empty if none)."""
    found: list[str] = []
    relayed = is_relayed(headers)
    if status >= 500 and not relayed:
        found.append(f"the proxy answered {status}: {body[:300]!r}")
    if status >= 400 and status != 499 and not relayed and (why := envelope_problem(body)):
        found.append(f"{status} without an OpenAI error envelope: {why}")
    for name, value in _values(headers):
        try:
            value.encode("latin-1")
        except UnicodeEncodeError:
            found.append(f"header {name} is not Latin-1 (a WSGI server cannot send it): {value[:80]!r}")
        if any(c in value for c in "\r\n\0"):
            found.append(f"header {name} holds CR, LF or NUL: {value[:80]!r}")
    return found


# -- known failures ----------------------------------------------------------------


@dataclass(frozen=True)
class Sent:
    """A request as the fuzz tests describe it to the known-failure matchers."""

    target: str
    method: str
    path: str
    query: Mapping[str, Any] = field(default_factory=dict)
    headers: Mapping[str, Any] = field(default_factory=dict)
    body: Any = None


@dataclass(frozen=True)
class Known:
    name: str
    where: str
    """The file that holds the cause (not one the fuzz work may change)."""
    reason: str
    matches: Callable[[Sent, list[str]], bool]


def _answered_500(found: list[str]) -> bool:
    return bool(found) and all(p.startswith("the proxy answered 500") for p in found)


def _instant_overflows(value: Any) -> bool:
    """What app/access/api.py parse_time trips on: a valid ISO 8601 time with an offset that
    puts it outside datetime's range once converted to UTC (0001-01-01T00:00+01:00)."""
    if not isinstance(value, str):
        return False
    try:
        dt = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except (ValueError, OverflowError):
        return False
    if dt.tzinfo is None:
        return False
    try:
        dt.astimezone(timezone.utc)
    except OverflowError:
        return True
    return False


def _usage_time_overflow(sent: Sent, found: list[str]) -> bool:
    return (sent.path == "/v1/usage" and _answered_500(found)
            and any(_instant_overflows(sent.query.get(k)) for k in ("since", "until")))


def _usage_key_nul_postgresql(sent: Sent, found: list[str]) -> bool:
    key = sent.query.get("key")
    return (sent.path == "/v1/usage" and sent.target.endswith("postgresql") and _answered_500(found)
            and isinstance(key, str) and "\0" in key)


KNOWN_FAILURES: tuple[Known, ...] = (
    Known(
        "usage-time-overflow", "app/access/api.py (parse_time)",
        "GET /v1/usage?since=0001-01-01T00:00:00%2B01:00 (or until=9999-12-31T23:59:59-01:00): "
        "dt.astimezone(timezone.utc) raises OverflowError outside the try -> 500",
        _usage_time_overflow,
    ),
    Known(
        "usage-key-nul-postgresql", "app/access/api.py (usage) / app/access/store.py",
        "GET /v1/usage?key=%00 on PostgreSQL: psycopg refuses NUL in a string literal (ValueError) -> 500",
        _usage_key_nul_postgresql,
    ),
)


def known_failure(sent: Sent, found: list[str]) -> Known | None:
    for known in KNOWN_FAILURES:
        if known.matches(sent, found):
            return known
    return None


def curl(sent: Sent) -> str:
    """A reproducer for a report."""
    from urllib.parse import urlencode

    url = sent.path + ("?" + urlencode(sent.query, doseq=True) if sent.query else "")
    parts = [f"curl -X {sent.method}"]
    parts += [f"-H {f'{k}: {v}'!r}" for k, v in sent.headers.items()]
    if sent.body is not None:
        raw = sent.body if isinstance(sent.body, (bytes, str)) else orjson.dumps(sent.body).decode()
        parts.append(f"-d {str(raw)[:2000]!r}")
    parts.append(f"'http://proxy{url}'  # target: {sent.target}")
    return " ".join(parts)

"""What every fuzz test checks, the apps it runs against, and the failures known to remain.

The invariants (`problems`), for any request whatever:
- no status >= 500 made by the proxy. A relayed answer carries `x-cot-proxy-provider`; the
  fake upstream here answers 2xx (or 400 for bodies it cannot read), so any other 5xx is ours;
- every 4xx/5xx the proxy made is an OpenAI error envelope `{"error": {message, type, param, code}}`
  (Anthropic's `{"type": "error", "error": {type, message}}` on /v1/messages);
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
import os
import socket
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
from flask import Flask

from app.access.settings import AccessSettings
from app.config import Config
from app.observability.settings import ObservabilitySettings
from tests.fakes.openai_upstream import FakeUpstream, Recorded, Reply, _default_reply, json_reply
from tests.support import proxy_config

PROVIDER_HEADER = "x-cot-proxy-provider"
TOKEN = "fuzz-gateway-token-0123456789"
ADMIN_TOKEN = "fuzz-admin-token-0123456789"
JWT_SECRET = "fuzz-jwt-secret-with-at-least-32-bytes!"
ENVELOPE_FIELDS = ("message", "type", "param", "code")

# -- scale and counts (FUZZ_SCALE, FUZZ_RANDOM: see conftest.py) ----------------------

SCALE = max(1, int(os.environ.get("FUZZ_SCALE", "1") or 1))
DERANDOMIZE = not os.environ.get("FUZZ_RANDOM")
CASES: Counter[str] = Counter()
"""Cases run per test id (shown after the run)."""
SECONDS: Counter[str] = Counter()
KNOWN_SEEN: Counter[str] = Counter()
"""How often each known failure turned up (shown after the run)."""


def examples(n: int) -> int:
    return n * SCALE


@dataclass
class Target:
    name: str
    app: Flask
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def client(self):
        return self.app.test_client()


def counts() -> dict[str, dict[str, float]]:
    """This process's counts, as an xdist worker hands them to the controller (tests/conftest.py)."""
    return {"cases": dict(CASES), "seconds": dict(SECONDS), "known": dict(KNOWN_SEEN)}


def add_counts(got: dict[str, dict[str, float]]) -> None:
    CASES.update(got.get("cases", {}))
    SECONDS.update(got.get("seconds", {}))
    KNOWN_SEEN.update(got.get("known", {}))


def write_summary(tr: Any) -> None:
    """The "fuzz cases" section at the end of a run: cases and seconds per file, known failures seen."""
    if not CASES:
        return
    tr.section("fuzz cases")
    by_file: Counter[str] = Counter()
    time_by_file: Counter[str] = Counter()
    for nodeid, n in CASES.items():
        by_file[nodeid.split("::")[0]] += n
    for nodeid, s in SECONDS.items():
        if nodeid.startswith("tests/fuzz/"):
            time_by_file[nodeid.split("::")[0]] += s
    for path, n in sorted(by_file.items()):
        tr.write_line(f"{path}: {n} cases in {time_by_file[path]:.1f} s")
    tr.write_line(f"total: {sum(CASES.values())} cases (FUZZ_SCALE={SCALE})")
    if tr.config.getoption("verbose") > 0:
        for nodeid, n in sorted(CASES.items()):
            tr.write_line(f"  {n:6d}  {SECONDS[nodeid]:6.2f} s  {nodeid}")
    for name, n in sorted(KNOWN_SEEN.items()):
        known = next(k for k in KNOWN_FAILURES if k.name == name)
        tr.write_line(f"known failure {name} ({known.where}) seen {n} times: {known.reason}")


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
    access = AccessSettings.from_env(
        {
            "GATEWAY_BEARER_TOKEN": TOKEN,
            "ADMIN_TOKEN": ADMIN_TOKEN,
            "VIRTUAL_KEYS": "true",
            "DATABASE_URL": database_url,
            "JWT_SECRET": JWT_SECRET,
            "USAGE_FLUSH_SECONDS": "0.2",
        }
    )
    return replace(relay_config(upstream), access=access)


def routed_config(upstream: FakeUpstream, path: Any) -> Config:
    """Two providers on the fake upstream from a config file, LLM_PARAMS and THINK_MODE=separate."""
    url = upstream.base_url
    path.write_text(
        "providers:\n"
        f"  a: {{type: openai, base_url: {url}, retries: 0}}\n"
        f"  b: {{type: openai, backends: [{{base_url: {url}}}, {{base_url: {url}, weight: 2}}],"
        " balance: prefix_affinity, retries: 1}\n"
        "models:\n"
        "  alias: {route: [a/fake-model, b/fake-model]}\n"
        "default_provider: b\n"
    )
    return Config.from_env(
        {
            "COT_PROXY_CONFIG": str(path),
            "CONNECT_TIMEOUT_SECONDS": "2",
            "REQUEST_TIMEOUT_SECONDS": "5",
            "LLM_PARAMS": "model=default,temperature=0.5,default.top_p=0.9,append_to_last_user_message= (be brief)",
            "THINK_MODE": "separate",
            "LOG_LEVEL": "warning",
        }
    )


def _tolerant_reply(rec: Recorded) -> Reply:
    """The fake's usual answers; a body it cannot read gets a 400, as a real upstream would send."""
    try:
        return _default_reply(rec)
    except Exception as exc:
        return json_reply(
            {
                "error": {
                    "message": f"fake upstream cannot read this body: {type(exc).__name__}",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": None,
                }
            },
            status=400,
        )


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


ANTHROPIC_PATHS = frozenset({"/v1/messages", "/v1/messages/count_tokens"})


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


def anthropic_problem(body: bytes) -> str | None:
    """Why `body` is not Anthropic's error shape `{"type": "error", "error": {"type", "message"}}`, or None."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return f"error body is not JSON: {body[:200]!r}"
    if not isinstance(data, dict) or data.get("type") != "error" or not isinstance(data.get("error"), dict):
        return f"error body is not {{'type': 'error', 'error': {{...}}}}: {body[:200]!r}"
    error = data["error"]
    if not isinstance(error.get("type"), str) or not isinstance(error.get("message"), str):
        return f"error type/message are not strings: {body[:200]!r}"
    return None


def problems(status: int, headers: Mapping[str, Any], body: bytes, method: str = "GET", path: str = "") -> list[str]:
    """Every invariant this response breaks (empty if none). A HEAD answer has no body to check.
    Under /v1/messages (Anthropic's API) errors are in Anthropic's shape instead of OpenAI's."""
    found: list[str] = []
    relayed = is_relayed(headers)
    anthropic = path.split("?")[0].rstrip("/") in ANTHROPIC_PATHS
    if status >= 500 and not relayed:
        found.append(f"the proxy answered {status}: {body[:300]!r}")
    if method.upper() == "HEAD":
        if body:
            found.append(f"HEAD answered with a body: {body[:100]!r}")
    elif status >= 400 and status != 499 and not relayed and anthropic and (why := anthropic_problem(body)):
        found.append(f"{status} without Anthropic's error shape: {why}")
    elif status >= 400 and status != 499 and not relayed and not anthropic and (why := envelope_problem(body)):
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


KNOWN_FAILURES: tuple[Known, ...] = ()
"""None left: the causes outside the fuzz work's files that it met were fixed in their own files
meanwhile (the model name in x-cot-proxy-provider: app/relay.py drops unsafe header values;
GET /v1/usage with a time out of range in UTC, or NUL in `key` on PostgreSQL: app/access/api.py,
7d580f1). An entry names its file in `where`, with a matcher over (Sent, problems), e.g.:

    Known("usage-key-nul-postgresql", "app/access/api.py",
          "psycopg refuses NUL in a string literal -> 500",
          lambda sent, found: sent.path == "/v1/usage" and "\\0" in str(sent.query.get("key")))
"""


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

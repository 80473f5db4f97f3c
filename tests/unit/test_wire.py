"""app/wire.py: Gunicorn's response writer with the head sent with the first body bytes.

Each case writes the same response through stock Gunicorn and through the installed writer: the
bytes on the wire must be identical, and only the number of `sendall` calls may differ (one for a
whole answer, head and first chunk together for a stream; the head alone, at once, for an empty
first write, a HEAD, a 204 or a body past Content-Length)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import pytest
from gunicorn.config import Config
from gunicorn.http import wsgi
from gunicorn.http.parser import RequestParser

from app import wire


class Sock:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        self.sent.append(bytes(data))


@pytest.fixture
def classes() -> Iterator[tuple[type, type]]:
    stock = wsgi.Response
    wire.install()
    try:
        assert wsgi.Response is not stock
        yield stock, wsgi.Response
    finally:
        wsgi.Response = stock


def run(cls: type, method: str, status: str, headers: list[tuple[str, str]], writes: list[bytes]) -> list[bytes]:
    cfg = Config()
    raw = f"{method} /v1/x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n".encode()
    req = next(RequestParser(cfg, iter([raw]), ("127.0.0.1", 1)))
    sock = Sock()
    resp = cls(req, sock, cfg)
    resp.start_response(status, headers)
    for data in writes:
        resp.write(data)
    resp.close()
    return [re.sub(rb"Date: [^\r]*", b"Date: -", s) for s in sock.sent]


JSON = [("Content-Type", "application/json"), ("Content-Length", "9")]
SSE = [("Content-Type", "text/event-stream")]
CASES: dict[str, tuple[str, str, list[tuple[str, str]], list[bytes], Callable[[list[bytes]], bool]]] = {
    "whole-json": ("POST", "200 OK", JSON, [b'{"a": 12}'], lambda s: len(s) == 1),
    "json-in-parts": ("POST", "200 OK", JSON, [b'{"a"', b": 12}"], lambda s: len(s) == 2),
    "stream": ("POST", "200 OK", SSE, [b"data: 1\n\n", b"data: 2\n\n"], lambda s: b"data: 1" in s[0]),
    "empty-first-write": ("POST", "200 OK", SSE, [b"", b"data: 1\n\n"], lambda s: s[0].endswith(b"\r\n\r\n")),
    "no-body": ("POST", "200 OK", [("Content-Length", "0")], [], lambda s: len(s) == 1),
    "head": ("HEAD", "200 OK", JSON, [b'{"a": 12}'], lambda s: len(s) == 1),
    "204": ("POST", "204 No Content", [], [b"ignored"], lambda s: len(s) == 1),
    "past-length": ("POST", "200 OK", [("Content-Length", "0")], [b"extra"], lambda s: len(s) == 1),
}


@pytest.mark.parametrize("case", list(CASES))
def test_same_bytes_fewer_sends(classes, case):
    stock, coalescing = classes
    method, status, headers, writes, shape = CASES[case]
    before = run(stock, method, status, headers, writes)
    after = run(coalescing, method, status, headers, writes)
    assert b"".join(after) == b"".join(before)
    assert shape(after), after
    if case in ("whole-json", "stream"):
        assert len(after) == len(before) - 1
        assert after[0].startswith(b"HTTP/1.1 200 OK\r\n")


def test_install_is_idempotent(classes):
    _, coalescing = classes
    wire.install()
    assert wsgi.Response is coalescing

"""Request bodies are bounded in size and time, chunked or not, through real Gunicorn.

MAX_REQUEST_BYTES=1000 and REQUEST_BODY_TIMEOUT_SECONDS=1, with auth on. Over the limit: 413
`request_too_large` for Content-Length and chunked bodies, on JSON and pass-through routes. A body
dribbled a byte at a time: 408 `request_timeout` within 5 s; without credentials: 401 at once,
before the body is complete. A malformed chunk size: 400 `invalid_body`. The upstream receives
nothing in all these cases. Requests are written on raw sockets.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import pytest

from tests.support import Gunicorn, RawConnection, RawResponse, raw_request, request_bytes

TOKEN = "tok-bodies-0123456789"
LIMIT = 1000
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _chat(size: int) -> tuple[str, bytes]:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "pad": ""}
    raw = json.dumps(body).encode()
    body["pad"] = "x" * max(0, size - len(raw))
    return "application/json", json.dumps(body).encode()


def _multipart(size: int) -> tuple[str, bytes]:
    boundary = "----bodies" + uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    return f"multipart/form-data; boundary={boundary}", head + b"\x00" * max(0, size - len(head) - len(tail)) + tail


ROUTES = {
    "/v1/chat/completions": _chat,  # a JSON route
    "/v1/files": _multipart,  # pass-through
    "/v1/audio/transcriptions": _multipart,  # media (binary-safe)
}


@pytest.fixture(scope="module")
def proxy(upstream) -> Iterator[Gunicorn]:
    g = Gunicorn(
        {
            "TARGET_BASE_URL": upstream.url("/tenant-a/v1/"),
            "GATEWAY_BEARER_TOKEN": TOKEN,
            "MAX_REQUEST_BYTES": str(LIMIT),
            "REQUEST_BODY_TIMEOUT_SECONDS": "1",
            "REQUEST_TIMEOUT_SECONDS": "10",
        },
        workers=1,
    )
    yield g
    g.stop()


def _chunks(body: bytes, size: int) -> bytes:
    out = b"".join(b"%x\r\n%s\r\n" % (len(body[i : i + size]), body[i : i + size]) for i in range(0, len(body), size))
    return out + b"0\r\n\r\n"


def _assert_error(r: RawResponse, status: int, code: str) -> None:
    assert r.status == status, r
    assert r.error()["code"] == code, r


@pytest.mark.parametrize("route", list(ROUTES))
def test_content_length_body_over_limit_413(proxy, up, route):
    content_type, body = ROUTES[route](3 * LIMIT)
    r = raw_request(proxy.port, "POST", route, {**AUTH, "Content-Type": content_type}, body)
    _assert_error(r, 413, "request_too_large")
    assert not up.seen, up.seen


@pytest.mark.parametrize("route", list(ROUTES))
def test_chunked_body_over_limit_413(proxy, up, route):
    content_type, body = ROUTES[route](3 * LIMIT)
    head = request_bytes(
        "POST",
        route,
        {**AUTH, "Content-Type": content_type, "Transfer-Encoding": "chunked", "Connection": "close"},
        port=proxy.port,
    )
    with RawConnection(proxy.port) as conn:
        conn.send(head + _chunks(body, 300))
        r = conn.read_response("POST")
    _assert_error(r, 413, "request_too_large")
    assert not up.seen, up.seen


@pytest.mark.parametrize("route", list(ROUTES))
def test_chunked_body_under_limit_is_relayed_whole(proxy, up, route):
    """The control case: a chunked body within the limit arrives upstream whole (one request)."""
    content_type, body = ROUTES[route](LIMIT // 2)
    head = request_bytes(
        "POST",
        route,
        {**AUTH, "Content-Type": content_type, "Transfer-Encoding": "chunked", "Connection": "close"},
        port=proxy.port,
    )
    with RawConnection(proxy.port) as conn:
        conn.send(head + _chunks(body, 97))
        r = conn.read_response("POST")
    assert r.status == 200, r
    assert [x.line for x in up.requests] == [f"POST /tenant-a{route} HTTP/1.1".encode()]
    sent = up.requests[0].body
    assert (json.loads(sent) == json.loads(body)) if content_type == "application/json" else sent == body


def _dribble(
    proxy: Gunicorn,
    route: str,
    headers: dict[str, str],
    *,
    chunked: bool,
    total: int = 400,
    pause: float = 0.1,
    bound: float = 4.5,
) -> tuple[RawResponse | None, int, float]:
    """Send the head, then one body byte every `pause` s until the proxy answers (or `bound` s).

    (response or None, body bytes sent, seconds from the head to the first byte of the answer)."""
    content_type, _ = ROUTES[route](total)
    h = {**headers, "Content-Type": content_type, "Connection": "close"}
    h["Transfer-Encoding" if chunked else "Content-Length"] = "chunked" if chunked else str(total)
    conn = RawConnection(proxy.port, timeout=bound + 5)
    try:
        conn.send(request_bytes("POST", route, h, port=proxy.port))
        started = time.monotonic()
        sent = 0
        answered = conn.readable(0)
        while not answered and sent < total and time.monotonic() - started < bound:
            if not conn.send(b"1\r\n{\r\n" if chunked else b"{"):
                break
            sent += 1
            answered = conn.readable(pause)  # the pause between bytes, cut short by an answer
        waited = time.monotonic() - started
        if not answered and not conn.readable(0.5):
            return None, sent, waited
        return conn.read_response("POST", timeout=5), sent, waited
    finally:
        conn.close()


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/files"])
def test_dribbled_body_408_within_bound(proxy, up, route, chunked):
    r, sent, waited = _dribble(proxy, route, AUTH, chunked=chunked)
    assert r is not None, f"no answer after {waited:.1f} s and {sent} dribbled bytes"
    _assert_error(r, 408, "request_timeout")
    assert waited < 5.0, f"408 only after {waited:.1f} s"
    # A pass-through upload may be streamed upstream as it arrives; it must then be cut off, never completed.
    assert not up.requests, [x.line for x in up.requests]
    if route == "/v1/chat/completions":
        assert not up.seen, up.seen  # a JSON body is read whole before anything is sent


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/files"])
def test_dribbled_body_without_credentials_401_at_once(proxy, up, route, chunked):
    r, sent, waited = _dribble(proxy, route, {}, chunked=chunked, bound=1.5)
    assert r is not None, f"no answer after {waited:.1f} s and {sent} dribbled bytes"
    _assert_error(r, 401, "invalid_api_key")
    assert waited < 0.8, f"401 only after {waited:.1f} s ({sent} body bytes): not before the body"
    assert sent < 400
    assert not up.seen, up.seen


@pytest.mark.parametrize("size_line", [b"zz", b"-5", b"5 5"])
@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/files", "/v1/audio/transcriptions"])
def test_malformed_chunk_size_400(proxy, up, route, size_line):
    content_type, _ = ROUTES[route](100)
    head = request_bytes(
        "POST",
        route,
        {**AUTH, "Content-Type": content_type, "Transfer-Encoding": "chunked", "Connection": "close"},
        port=proxy.port,
    )
    with RawConnection(proxy.port) as conn:
        conn.send(head + size_line + b"\r\nhello\r\n0\r\n\r\n")
        r = conn.read_response("POST")
    _assert_error(r, 400, "invalid_body")
    assert not up.seen, up.seen

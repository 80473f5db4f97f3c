"""Both upstream transports behave alike: `requests`' own adapter and the gevent one
(app/transport.py), driven through `Upstream.send` against a raw-socket upstream.

Every case runs on both, so a difference between them fails here: keep-alive reuse, bodies
framed by length, chunks or close, bodies cut short, 1xx answers, timeouts, `Call.abort()`
from another thread, content decoding, header injection, and the same error for each fault.
The gevent transport runs here without monkey-patching (gevent sockets in the main thread);
under Gunicorn the other trust tests here run it patched. `upstream` and `up` are this folder's
conftest's raw-socket upstream."""

from __future__ import annotations

import gzip
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from app.errors import UpstreamBadResponse, UpstreamTimeout, UpstreamUnavailable
from app.upstream import Call, Target, Upstream, pick_transport
from tests.fakes.hostile_upstream import Conn, HostileUpstream, RawRequest, json_answer, write_response
from tests.support import free_port

pytest.importorskip("geventhttpclient")

TRANSPORTS = ["requests", "gevent"]
BODY = b'{"model":"m","messages":[]}'


@pytest.fixture(params=TRANSPORTS)
def client(request: pytest.FixtureRequest) -> Iterator[Upstream]:
    u = Upstream(transport=request.param)
    assert u.transport == request.param
    yield u
    u.adapter.close()


def target(up: HostileUpstream, read_timeout: float = 5.0) -> Target:
    return Target(base_url=up.url("/v1/"), connect_timeout=2.0, read_timeout=read_timeout)


def post(client: Upstream, t: Target, call: Call | None = None, headers: dict[str, str] | None = None):
    h = {"content-type": "application/json", **(headers or {})}
    return client.send(t, "POST", t.url("chat/completions"), h, BODY, call=call)


def peer_port(ports: list[int]):
    """An answer that records the client's port (one per connection), then answers `{}`."""

    def answer(req: RawRequest, conn: Conn) -> None:
        ports.append(conn.sock.getpeername()[1])
        write_response(conn, req, 200, {"Content-Type": "application/json"}, [b"{}"])

    return answer


def test_keep_alive_reuses_one_connection(client, up):
    ports: list[int] = []
    up.enqueue(peer_port(ports), peer_port(ports), peer_port(ports))
    t = target(up)
    for _ in range(3):
        assert post(client, t).read_all(1000) == b"{}"
    assert len(ports) == 3 and len(set(ports)) == 1, ports
    assert up.requests[0].body == BODY


def test_every_framing_is_read_whole(client, up):
    big = b"x" * 200_000

    def close_delimited(req: RawRequest, conn: Conn) -> None:
        conn.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n" + big)
        conn.close_after = True

    up.enqueue(
        lambda req, conn: write_response(conn, req, 200, {}, [big]),
        lambda req, conn: write_response(conn, req, 200, {}, [big[:1000], big[1000:]], chunked=True),
        close_delimited,
    )
    t = target(up)
    for _ in range(3):
        assert post(client, t).read_all(1 << 20) == big


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_cut_short_is_an_error(client, up, chunked):
    def cut(req: RawRequest, conn: Conn) -> None:
        if chunked:
            conn.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nonly-some")
        else:
            conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly-some")
        conn.close_after = True

    up.enqueue(cut)
    reply = post(client, target(up))
    with pytest.raises(UpstreamBadResponse):
        reply.read_all(1000)


@pytest.mark.parametrize(
    "wire",
    [b"", b"HTTP/1.1 2OO OK\r\n\r\n", b"NOT HTTP AT ALL\r\n\r\n"],
    ids=["closed-without-answer", "bad-status", "not-http"],
)
def test_no_answer_or_garbage_is_a_bad_response(client, up, wire):
    def answer(req: RawRequest, conn: Conn) -> None:
        if wire:
            conn.write(wire)
        conn.close_after = True

    up.enqueue(answer)
    with pytest.raises(UpstreamBadResponse):
        post(client, target(up)).read_all(1000)


def test_connection_refused_is_unavailable(client):
    t = Target(base_url=f"http://127.0.0.1:{free_port()}/v1/", connect_timeout=2.0)
    with pytest.raises(UpstreamUnavailable):
        post(client, t)


def test_informational_answers_are_skipped(client, up):
    def hints(req: RawRequest, conn: Conn) -> None:
        conn.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n")
        conn.write(b"HTTP/1.1 102 Processing\r\n\r\n")
        write_response(conn, req, 201, {"Content-Type": "application/json", "X-Final": "yes"}, [b'{"ok":1}'])

    up.enqueue(hints)
    reply = post(client, target(up))
    assert (reply.status, reply.headers.get("x-final"), "link" in reply.headers) == (201, "yes", False)
    assert reply.read_all(1000) == b'{"ok":1}'


def test_duplicate_headers_are_joined(client, up):
    def answer(req: RawRequest, conn: Conn) -> None:
        conn.write(b"HTTP/1.1 200 OK\r\nX-Many: a\r\nX-Many: b\r\nContent-Length: 2\r\n\r\n{}")

    up.enqueue(answer)
    reply = post(client, target(up))
    assert reply.headers["x-many"] == "a, b"
    reply.close()


def test_read_timeout_before_the_head_and_mid_body(client, up):
    release = threading.Event()

    def silent(req: RawRequest, conn: Conn) -> None:
        release.wait(5)
        conn.close_after = True

    def stalls(req: RawRequest, conn: Conn) -> None:
        conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nsome")
        release.wait(5)
        conn.close_after = True

    up.enqueue(silent, stalls)
    t = target(up, read_timeout=0.3)
    try:
        started = time.monotonic()
        with pytest.raises(UpstreamTimeout):
            post(client, t)
        reply = post(client, t)
        with pytest.raises(UpstreamTimeout):
            reply.read_all(1000)
        assert time.monotonic() - started < 4
    finally:
        release.set()


def test_abort_from_another_thread_ends_a_read_mid_body(client, up):
    release = threading.Event()

    def stalls(req: RawRequest, conn: Conn) -> None:
        conn.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nsome\r\n")
        release.wait(5)
        conn.close_after = True

    up.enqueue(stalls)
    call = Call()
    reply = post(client, target(up), call=call)
    chunks = reply.chunks()
    assert next(chunks) == b"some"
    timer = threading.Timer(0.2, call.abort)
    timer.start()
    started = time.monotonic()
    try:
        with pytest.raises(UpstreamBadResponse):
            next(chunks)
        assert time.monotonic() - started < 3
    finally:
        release.set()
        timer.cancel()
        reply.close()


def test_a_late_abort_leaves_the_pooled_connection_alone(client, up):
    ports: list[int] = []
    up.enqueue(peer_port(ports), peer_port(ports))
    t = target(up)
    first = Call()
    assert post(client, t, call=first).read_all(1000) == b"{}"
    first.abort()  # after its reply closed: the connection is back in the pool
    assert post(client, t).read_all(1000) == b"{}"
    assert len(set(ports)) == 1, ports


def test_gzip_is_decoded_by_chunks_and_kept_by_raw_chunks(client, up):
    packed = gzip.compress(b'{"hello":"world"}' * 100)
    answer = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    up.enqueue(
        lambda req, conn: write_response(conn, req, 200, answer, [packed], chunked=True),
        lambda req, conn: write_response(conn, req, 200, answer, [packed]),
    )
    t = target(up)
    assert post(client, t).read_all(1 << 20) == b'{"hello":"world"}' * 100
    raw = post(client, t)
    assert b"".join(raw.raw_chunks()) == packed
    raw.close()


def test_a_header_with_a_line_break_never_reaches_the_upstream(client, up):
    up.enqueue(json_answer({}))
    with pytest.raises(Exception):  # noqa: B017 - either transport's own refusal
        post(client, target(up), headers={"x-note": "a\r\nx-injected: 1"})
    assert not any(b"x-injected" in line.lower() for line in up.seen)
    assert all(r.header("x-injected") is None for r in up.requests)


@pytest.mark.parametrize("name", ["x-a: b", " x-lead", ":x", "x-a\tb: c"])
def test_a_header_name_http_client_refuses_never_reaches_the_upstream(client, up, name):
    up.enqueue(json_answer({}))
    with pytest.raises(Exception):  # noqa: B017 - either transport's own refusal
        post(client, target(up), headers={name: "1"})
    assert not up.seen


def endless(prefix: bytes, line: bytes, limit: int = 64 * 1024 * 1024):
    """An answer that sends `prefix`, then `line` over and over (bounded: 64 MiB or the peer leaving)."""

    def answer(req: RawRequest, conn: Conn) -> None:
        conn.write(prefix)
        block = line * max(1, 65536 // len(line))
        sent = 0
        while sent < limit:
            conn.write(block)  # PeerGone once the client closed: the answer ends there
            sent += len(block)
        conn.close_after = True

    return answer


@pytest.mark.parametrize(
    "answer",
    [
        endless(b"HTTP/1.1 200 OK\r\n", b"X-Pad: " + b"a" * 100 + b"\r\n"),
        endless(b"", b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"),
        endless(b"HTTP/1.1 200 OK\r\nX-Long: ", b"b" * 4096),
        endless(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\nX-T: ", b"t" * 4096),
        endless(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n", b"X-T: 1\r\n"),
    ],
    ids=["endless-headers", "endless-1xx", "endless-header-line", "endless-trailer-line", "endless-trailers"],
)
def test_an_endless_head_or_trailer_is_refused_early(client, up, answer):
    up.enqueue(answer)
    started = time.monotonic()
    with pytest.raises(UpstreamBadResponse):
        post(client, target(up, read_timeout=30)).read_all(1000)
    assert time.monotonic() - started < 10


def read_head(conn: socket.socket) -> bytes:
    """A request's head off a raw server socket (bounded: 64 KiB)."""
    head = b""
    while b"\r\n\r\n" not in head and len(head) < 65536:
        data = conn.recv(4096)
        if not data:
            break
        head += data
    return head


def test_an_answer_sent_before_the_body_was_read_is_relayed(client):
    """An upstream that refuses a large body at once (413, then close, the body unread): the client gets
    that answer, not a broken-pipe 502 (urllib3 reads it too)."""
    listener = socket.create_server(("127.0.0.1", 0))

    def refuse() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(5)
            read_head(conn)  # the body stays unread
            conn.sendall(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
            conn.shutdown(socket.SHUT_WR)
            time.sleep(0.2)  # the peer's unread body makes this close a reset
        listener.close()

    threading.Thread(target=refuse, daemon=True).start()
    t = Target(base_url=f"http://127.0.0.1:{listener.getsockname()[1]}/v1/", connect_timeout=2.0, read_timeout=5.0)
    big = b"x" * (32 * 1024 * 1024)
    reply = client.send(t, "POST", t.url("files"), {"content-type": "application/octet-stream"}, big)
    assert (reply.status, reply.read_all(1000)) == (413, b"{}")


def test_an_ipv6_upstream_gets_a_bracketed_host(client):
    try:
        listener = socket.create_server(("::1", 0), family=socket.AF_INET6)
    except OSError:
        pytest.skip("no IPv6 loopback here")
    seen: list[bytes] = []

    def answer() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(5)
            head = read_head(conn)
            seen.append(head)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
        listener.close()

    threading.Thread(target=answer, daemon=True).start()
    port = listener.getsockname()[1]
    t = Target(base_url=f"http://[::1]:{port}/v1/", connect_timeout=2.0, read_timeout=5.0)
    assert post(client, t).read_all(100) == b"{}"
    assert f"\r\nHost: [::1]:{port}\r\n".encode() in seen[0].replace(b"host:", b"Host:"), seen


def test_pick_transport():
    assert pick_transport("requests") == "requests"
    assert pick_transport("gevent") == "gevent"
    assert pick_transport("auto") == "requests"  # this process's sockets are not gevent's
    code = "from gevent import monkey; monkey.patch_all(); from app.upstream import pick_transport; "
    code += "print(pick_transport('auto'), pick_transport('auto', tracing=True))"
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["gevent", "requests"], out.stderr


def _no_lookup(*args: object, **kwargs: object) -> list:
    raise AssertionError(f"getaddrinfo{args}")


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_an_ip_literal_upstream_is_connected_without_a_lookup(monkeypatch, host):
    """gevent's getaddrinfo hands each lookup to a native thread; an address needs none."""
    import gevent.socket

    from app.transport import _HTTPPool

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        listener = socket.create_server((host, 0), family=family)
    except OSError:
        pytest.skip(f"no {host} here")
    port = listener.getsockname()[1]
    monkeypatch.setattr(gevent.socket, "getaddrinfo", _no_lookup)
    pool = _HTTPPool(host, port, host, port, connection_timeout=2.0, network_timeout=None)
    pool._idle = []
    with listener:
        sock = pool.get_socket()
        assert sock.getpeername()[:2] == (host, port)
        sock.close()
        name = _HTTPPool("localhost", port, "localhost", port, connection_timeout=2.0, network_timeout=None)
        name._idle = []
        with pytest.raises(AssertionError, match="getaddrinfo"):
            name.get_socket()  # a name is still looked up

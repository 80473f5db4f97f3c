"""The gevent transport: requests' adapter interface over geventhttpclient's C parser (llhttp).

Why: under gevent workers one upstream call through `requests` + urllib3 + `http.client` costs
about 350 us of CPU here, a third of a proxied request; this adapter does the same call in about
130 us (bench/README.md). It is used where sockets are gevent's (the default worker) and tracing
is off; gthread/sync workers and tracing (OpenTelemetry instruments urllib3) keep `requests`' own
adapter. `UPSTREAM_TRANSPORT=requests` forces that one.

Kept from `requests`' adapter, and tested with both: connect and per-call read timeouts, bodies
delimited by Content-Length, chunks or close, a body cut short is an error, informational (1xx)
answers skipped, keep-alive pooling per origin and TLS setting, a stale pooled connection
discarded, TLS verified against certifi's bundle, `Call.abort()` from another greenlet.
Content decoding (and its bounds against compression bombs) is urllib3's: the body reaches
`UpstreamReply` as a `urllib3.HTTPResponse` over the de-chunked socket stream.

Errors leave here as the `requests`/urllib3 exceptions `upstream.map_requests_error` maps, so
the relay cannot tell the transports apart: connect failures as `ConnectionError`/
`ConnectTimeout`/`SSLError`, a bad or missing answer as `ConnectionError(ProtocolError)`, a
slow one as `ReadTimeout`; mid-body, urllib3's own `ProtocolError`/`ReadTimeoutError`.
"""

from __future__ import annotations

import ipaddress
import re
import select
import socket
import ssl
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import certifi
import requests
from gevent.monkey import get_original
from geventhttpclient.connectionpool import ConnectionPool, SSLConnectionPool
from geventhttpclient.response import HTTPParseError, HTTPResponse
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict
from urllib3 import HTTPHeaderDict
from urllib3.exceptions import ProtocolError, ReadTimeoutError
from urllib3.response import HTTPResponse as Urllib3Response

from .upstream import _CALL

_poll = get_original("select", "poll")
BLOCK = 64 * 1024
MAX_HEAD_BYTES = 256 * 1024
"""Status line and headers (with any 1xx before them) beyond this are refused: llhttp sets no bound,
and a header value that never ends would grow the worker (http.client: 64 KiB a line, 100 lines)."""
IDLE_PER_ORIGIN = 1024
"""Idle keep-alive sockets kept per origin (urllib3's pool_maxsize here before)."""
_ILLEGAL = re.compile("[\r\n\0]")
_NAMES = re.compile(r"[^:\s][^:\r\n]*(?:\n[^:\s][^:\r\n]*)*")
"""Header names one per line, each as http.client allows one: no colon, no leading space."""


class _Headers(list):
    """The parser's header store: pairs in order, duplicates kept (merged later by urllib3)."""

    def add(self, name: str, value: str) -> None:
        self.append((name, value))


class _Head(HTTPResponse):
    """Status and headers of the final answer; its body accumulates in `_body_buffer`."""

    def __init__(self, sock: socket.socket, method: str) -> None:
        super().__init__(method=method, headers_type=_Headers)
        seen = 0
        while not self.headers_complete or self.get_code() < 200:  # 1xx: the final answer follows
            data = sock.recv(BLOCK)
            if not data:
                why = "closed the connection mid-answer" if seen else "closed the connection without an answer"
                raise requests.exceptions.ConnectionError(ProtocolError(f"Upstream {why}."))
            seen += len(data)
            if seen > MAX_HEAD_BYTES and not self.headers_complete:
                raise requests.exceptions.ConnectionError(ProtocolError("Upstream sent an oversized head."))
            self.feed(data)

    _fields_size = 0

    def _on_header_field(self, string: str) -> None:
        self._bound(string)
        super()._on_header_field(string)

    def _on_header_value(self, string: str) -> None:
        self._bound(string)
        super()._on_header_value(string)

    def _bound(self, string: str) -> None:
        """Header and trailer fields together stay within MAX_HEAD_BYTES (trailers arrive after the body,
        where the loop above no longer counts)."""
        self._fields_size += len(string)
        if self._fields_size > MAX_HEAD_BYTES:
            raise HTTPParseError("header or trailer fields larger than MAX_HEAD_BYTES")


class _Body:
    """One answer's body, de-chunked, as it arrives.

    Without a Content-Encoding it is the response's `raw` itself: the few urllib3 response methods
    `requests` and `UpstreamReply` call (`read1`, `read`, `stream`, `close`), with urllib3's
    exceptions. With one, it is the `fp` a `urllib3.HTTPResponse` decodes (and bounds) from.

    The socket goes back to the pool only once the whole message was read (else it is closed),
    and `sock` is cleared then, so a late `Call.abort()` cannot touch a connection in reuse."""

    chunked = False
    _head: _Head
    _buf: bytearray

    def __init__(self, sock: socket.socket, pool: _Pool) -> None:
        self.sock: socket.socket | None = sock
        self._pool = pool

    def attach(self, head: _Head) -> None:
        self._head = head
        self._buf = head._body_buffer

    def read1(self, amt: int | None = -1, decode_content: bool = True) -> bytes:
        buf = self._buf
        if not buf:
            try:
                self._fill()
            except BaseException:
                self.close()
                raise
            if not buf:
                self.close()  # the whole message was read: the socket may serve the next call
                return b""
        if amt is None or amt < 0 or amt >= len(buf):
            out = bytes(buf)
            buf.clear()
        else:
            out = bytes(buf[:amt])
            del buf[:amt]
        return out

    def _fill(self) -> None:
        head, buf = self._head, self._buf
        while not buf and not head.message_complete and self.sock is not None:
            try:
                data = self.sock.recv(BLOCK)
            except TimeoutError as exc:
                raise ReadTimeoutError(None, "", "Read timed out.") from exc  # type: ignore[arg-type]
            except OSError as exc:
                raise ProtocolError(f"Connection broken: {exc!r}", exc) from exc
            try:
                head.feed(data)
            except HTTPParseError as exc:
                raise ProtocolError(f"Malformed response body: {exc}") from exc
            if not data and not head.message_complete:
                raise ProtocolError("Connection broken: the body ended early.")

    def read(self, amt: int | None = None, decode_content: bool = True) -> bytes:
        if amt is not None:
            return self.read1(amt)  # what has arrived, up to amt: urllib3 stream()s this way too
        parts = []
        while data := self.read1():
            parts.append(data)
        return b"".join(parts)

    def stream(self, amt: int = BLOCK, decode_content: bool = True) -> Iterator[bytes]:
        while data := self.read1(amt):
            yield data

    def supports_chunked_reads(self) -> bool:
        return False

    def isclosed(self) -> bool:
        return self.sock is None

    @property
    def closed(self) -> bool:
        return self.sock is None

    def release_conn(self) -> None:
        """`close` returns or closes the connection; nothing is left to release."""

    def close(self) -> None:
        sock, self.sock = self.sock, None
        if sock is None:
            return
        if self._head.message_complete and not self._head.should_close():
            self._pool.return_socket(sock)
        else:
            sock.close()


class _Pool:
    """Idle keep-alive sockets of one origin, newest first; no bound on calls at once (as urllib3's
    non-blocking pool). Mixed in before geventhttpclient's pool, whose connect, DNS and TLS it keeps."""

    _idle: list[socket.socket]

    def get_socket(self) -> socket.socket:
        idle = self._idle
        while idle:
            sock = idle.pop()
            if _idle_alive(sock):
                return sock
            sock.close()
        return self._create_socket()  # type: ignore[attr-defined]

    def _resolve(self) -> list[tuple[Any, ...]]:
        """An IP literal needs no lookup. getaddrinfo runs in gevent's thread pool: a hand-off to a
        native thread per new connection, the largest CPU cost when 1,000 streams open at once."""
        host, port = self._connection_host, self._connection_port  # type: ignore[attr-defined]
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            ip = None
        if ip is None or "%" in host or (ip.version == 6 and self.disable_ipv6):  # type: ignore[attr-defined]
            return super()._resolve()  # type: ignore[misc]  # a name, or a scoped address
        if ip.version == 4:
            return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port))]
        return [(socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port, 0, 0))]

    def after_connect(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as urllib3: no Nagle wait

    def return_socket(self, sock: socket.socket) -> None:
        if len(self._idle) < IDLE_PER_ORIGIN:
            self._idle.append(sock)
        else:
            sock.close()

    def release_socket(self, sock: socket.socket) -> None:
        sock.close()

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()


class _HTTPPool(_Pool, ConnectionPool):
    pass


class _HTTPSPool(_Pool, SSLConnectionPool):
    pass


def _idle_alive(sock: socket.socket) -> bool:
    """An idle keep-alive socket has nothing to read: readable means closed by the server (or junk).
    Asked of the file descriptor with the real (unpatched) poll, one syscall, so it works for TLS
    sockets too (whose `recv` takes no flags), plus no TLS record already buffered."""
    try:
        fd = sock.fileno()
        if fd < 0:
            return False
        poller = _poll()
        poller.register(fd, select.POLLIN | select.POLLPRI)
        if poller.poll(0):
            return False
        pending = getattr(sock, "pending", None)
        return not (pending is not None and pending())
    except (OSError, ValueError):
        return False


class GeventAdapter(BaseAdapter):
    """`requests`' transport interface (`send`, `close`) on gevent sockets; one pool per
    origin, TLS setting and connect timeout."""

    def __init__(self) -> None:
        super().__init__()
        self._pools: dict[tuple[str, str, int, Any, float], _Pool] = {}

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: Any = True,
        cert: Any = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        if proxies:
            raise requests.exceptions.InvalidProxyURL("The gevent transport does not use proxies.")
        connect_timeout, read_timeout = timeout if isinstance(timeout, tuple) else (timeout, timeout)
        parts = urlsplit(request.url or "")
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        pool = self._pool(parts.scheme, host, port, verify, connect_timeout)
        wire = _request_bytes(request, parts, host, port)
        sock = _connect(pool)
        body = _Body(sock, pool)
        call = _CALL.get()
        try:
            if call is not None:
                call.connection = body  # `abort()` shuts `body.sock`, from the head on
                if call.aborted:
                    raise ConnectionAbortedError("the call was aborted")
            sock.settimeout(read_timeout)
            try:
                _send(sock, wire, request.body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the upstream may have answered before reading it all (a 413, say): read that
            head = _Head(sock, request.method or "GET")
        except BaseException as exc:
            body.sock = None
            pool.release_socket(sock)
            raise _mapped(exc) from exc
        body.attach(head)
        return _response(request, head, body, stream)

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()

    def _pool(self, scheme: str, host: str, port: int, verify: Any, connect_timeout: float | None) -> _Pool:
        key = (scheme, host, port, verify, connect_timeout or 0.0)
        pool = self._pools.get(key)
        if pool is None:
            common = {"connection_timeout": connect_timeout, "network_timeout": None}
            if scheme == "https":
                bundle = verify if isinstance(verify, str) else certifi.where()
                pool = _HTTPSPool(
                    host, port, host, port, insecure=verify is False, ssl_options={"ca_certs": bundle}, **common
                )
                if verify is False:
                    pool.ssl_context.verify_mode = ssl.CERT_NONE
            elif scheme == "http":
                pool = _HTTPPool(host, port, host, port, **common)
            else:
                raise requests.exceptions.InvalidURL(f"Unsupported scheme {scheme!r}.")
            pool._idle = []
            self._pools[key] = pool
        return pool


def _connect(pool: _Pool) -> socket.socket:
    try:
        return pool.get_socket()
    except ssl.SSLError as exc:
        raise requests.exceptions.SSLError(exc) from exc
    except TimeoutError as exc:
        raise requests.exceptions.ConnectTimeout(exc) from exc
    except OSError as exc:
        raise requests.exceptions.ConnectionError(exc) from exc


def _request_bytes(request: requests.PreparedRequest, parts: Any, host: str, port: int) -> bytes:
    """The request head, as http.client would write it (a default Host and Accept-Encoding);
    CR, LF or NUL in a header, or a name http.client would refuse, is refused."""
    target = (parts.path or "/") + ("?" + parts.query if parts.query else "")
    lines = [f"{request.method} {target} HTTP/1.1"]
    headers = request.headers
    if "host" not in headers:
        default = 443 if parts.scheme == "https" else 80
        name = f"[{host}]" if ":" in host else host  # an IPv6 literal is bracketed, as in the URL
        lines.append(f"Host: {name if port == default else f'{name}:{port}'}")
    if "accept-encoding" not in headers:
        lines.append("Accept-Encoding: identity")
    fields = [f"{name}: {value}" for name, value in headers.items()]
    if _ILLEGAL.search("".join(fields)):  # no line break of ours is in there yet
        raise ValueError("Invalid header: CR, LF or NUL in a name or value")
    if headers and not _NAMES.fullmatch("\n".join(headers)):
        raise ValueError("Invalid header name")
    lines += fields
    lines.append("\r\n")
    return "\r\n".join(lines).encode("latin-1")


def _send(sock: socket.socket, head: bytes, body: Any) -> None:
    if body is None:
        sock.sendall(head)
    elif isinstance(body, (bytes, bytearray)):
        if len(body) < BLOCK:
            sock.sendall(head + body)  # one write: a small second one would wait on Nagle
        else:
            sock.sendall(head)
            sock.sendall(body)
    elif isinstance(body, str):
        sock.sendall(head + body.encode("utf-8"))
    else:
        sock.sendall(head)
        while data := body.read(BLOCK):
            sock.sendall(data)


def _mapped(exc: BaseException) -> BaseException:
    """A failure before the answer's head, in the exception `requests`' adapter would raise."""
    if isinstance(exc, requests.exceptions.RequestException):
        return exc
    if isinstance(exc, TimeoutError):
        return requests.exceptions.ReadTimeout(exc)
    if isinstance(exc, ssl.SSLError):
        return requests.exceptions.SSLError(exc)
    if isinstance(exc, HTTPParseError):
        return requests.exceptions.ConnectionError(ProtocolError(f"Malformed response: {exc}"))
    if isinstance(exc, OSError):
        return requests.exceptions.ConnectionError(ProtocolError(f"Connection broken: {exc!r}"))
    return exc


def _response(request: requests.PreparedRequest, head: _Head, body: _Body, stream: bool) -> requests.Response:
    lower: dict[str, str] = {}  # repeated names joined with ", ", as urllib3 does
    names: dict[str, str] = {}
    for name, value in head._headers_index:
        key = name.lower()
        if key in lower:
            lower[key] += ", " + value
        else:
            lower[key] = value
            names[key] = name
    headers = CaseInsensitiveDict()
    headers._store = {key: (names[key], value) for key, value in lower.items()}  # what its __setitem__ makes
    response = requests.Response()
    response.status_code = head.status_code
    response.reason = head.status_message
    response.headers = headers
    response.lower_headers = lower  # type: ignore[attr-defined] - UpstreamReply takes it over (no other reader)
    encoding = lower.get("content-encoding", "identity").strip().lower()
    if encoding != "identity":  # urllib3 decodes, bounded per read (a compression bomb cannot grow the worker)
        response.raw = Urllib3Response(
            body=body,
            headers=HTTPHeaderDict(lower),
            status=head.status_code,
            reason=head.status_message,
            preload_content=False,
            decode_content=True,
            request_method=request.method,
            request_url=request.url,
        )
    else:
        response.raw = body
    response.encoding = requests.utils.get_encoding_from_headers(response.headers)
    response.url = request.url or ""
    response.request = request
    if not stream:
        response.content  # noqa: B018 - read now, as requests does without stream=True
    return response

"""Talking to upstream servers: one pooled `requests` adapter per worker.

`mapped_errors` is the one place where `requests`/`urllib3`/socket exceptions
become our own (`app.errors`), for sending and for reading bodies alike; the
cause is kept (`raise ... from`). Messages name the upstream by scheme, host and
port only: never a path, query or header, which may carry a secret.

`UpstreamReply` is an upstream response as the relay reads it: decoded (gzip, deflate,
and br / zstd when their packages are installed) or raw for pass-through, in
bounded pieces (urllib3 caps decompressed output per read, so a compression
bomb cannot grow a worker), with informational answers (`103 Early Hints`)
skipped so the real status is the one relayed. Its `close()` is idempotent and
also ends the call's disconnect watch, so the relay has one thing to close.
"""

from __future__ import annotations

import http.client
import socket
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import cached_property
from typing import IO, Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import DecodeError, ProtocolError, ReadTimeoutError
from urllib3.util.request import ACCEPT_ENCODING

from .disconnect import DisconnectWatch
from .errors import (
    ClientDisconnected,
    InvalidRequest,
    ProxyError,
    UpstreamBadResponse,
    UpstreamTimeout,
    UpstreamUnavailable,
)

READ_SIZE = 64 * 1024
DECODABLE = frozenset(ACCEPT_ENCODING.split(","))
"""Content-Encodings this worker can decode (urllib3's, with the optional packages installed)."""


def accept_decodable(headers: dict[str, str]) -> dict[str, str]:
    """The client's Accept-Encoding, less what this worker cannot decode."""
    given = headers.get("accept-encoding")
    if given is None:
        return headers
    keep = [
        p for p in (part.strip() for part in given.split(",")) if p and p.split(";", 1)[0].strip().lower() in DECODABLE
    ]
    out = dict(headers)
    out["accept-encoding"] = ", ".join(keep) if keep else "identity"
    return out


@dataclass(frozen=True)
class Target:
    """Where one request goes: a base URL ending in `/` that `/v1/<rest>` maps under."""

    base_url: str
    api_key: str | None = field(default=None, repr=False)
    connect_timeout: float = 10.0
    read_timeout: float = 600.0
    name: str = "default"
    kind: str = "openai"
    """`openai` (any OpenAI-compatible server) or `livepeer` (a BYOC gateway)."""
    headers: Mapping[str, str] = field(default_factory=dict)
    """Sent with every request to this target, after the transforms ran."""
    apis: Mapping[str, str] = field(default_factory=dict)
    """Per client API this target may not speak (`messages`): `passthrough`, `translate` or `auto`
    (the default: passed through, translated once the target answers 404/405)."""

    def url(self, path: str, query: str = "") -> str:
        """`path` (under the base, no leading slash) appended; never a way out of the base path."""
        if any(seg in (".", "..") for seg in path.split("/")) or "//" in path or "\\" in path:
            raise InvalidRequest("The request path may not leave the upstream's base path.", code="invalid_path")
        return self.base_url + path + ("?" + query if query else "")

    @cached_property
    def public_url(self) -> str:
        """The base URL without credentials or query: what /health may show."""
        parts = urlsplit(self.base_url)
        return self.origin + parts.path

    @cached_property
    def origin(self) -> str:
        """scheme://host:port: safe to show in messages and logs."""
        parts = urlsplit(self.base_url)
        return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


class Call:
    """One upstream call's connection, so another greenlet or thread can `abort` it at any
    point (waiting for the first byte or mid-body): its socket is shut, the blocked read returns."""

    def __init__(self) -> None:
        self.connection: HTTPConnection | None = None
        self.aborted = False

    def release(self) -> None:
        """The reply is closed and its connection may serve another call from the pool: an
        `abort` from now on must not touch it."""
        self.connection = None

    def abort(self) -> None:
        self.aborted = True
        sock = getattr(self.connection, "sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


_CALL: ContextVar[Call | None] = ContextVar("cot_proxy_upstream_call", default=None)
"""The `Call` being sent in this greenlet/thread; its connection registers itself there."""


@contextmanager
def mapped_errors(target: Target) -> Iterator[None]:
    """Foreign exceptions inside become our `UpstreamError`s (cause kept); ours pass."""
    try:
        yield
    except (ProxyError, ClientDisconnected):
        raise
    except Exception as exc:
        raise map_requests_error(exc, target) from exc


def map_requests_error(exc: BaseException, target: Target) -> ProxyError:
    """Translate a `requests`/`urllib3`/socket failure into our exception tree."""
    where = target.origin
    if isinstance(exc, (requests.exceptions.Timeout, ReadTimeoutError, TimeoutError)) or _wraps(exc, ReadTimeoutError):
        return UpstreamTimeout(f"Upstream {where} did not answer within the timeout.")
    if isinstance(exc, requests.exceptions.SSLError):
        return UpstreamUnavailable(f"TLS handshake with upstream {where} failed.")
    if isinstance(
        exc,
        (
            requests.exceptions.ChunkedEncodingError,
            requests.exceptions.ContentDecodingError,
            ProtocolError,
            DecodeError,
        ),
    ) or _wraps(exc, ProtocolError):
        return UpstreamBadResponse(f"Upstream {where} broke off or sent a malformed response.")
    if isinstance(exc, (requests.exceptions.ConnectionError, OSError)):
        return UpstreamUnavailable(f"Cannot connect to upstream {where}.")
    return UpstreamBadResponse(f"Request to upstream {where} failed ({type(exc).__name__}).")


def _wraps(exc: BaseException, kind: type[BaseException]) -> bool:
    seen = 0
    cur: BaseException | None = exc
    while cur is not None and seen < 5:
        if isinstance(cur, kind) or any(isinstance(a, kind) for a in getattr(cur, "args", ())):
            return True
        cur = cur.__cause__ or cur.__context__
        seen += 1
    return False


def pick_transport(choice: str, *, tracing: bool = False) -> str:
    """`gevent` or `requests` for UPSTREAM_TRANSPORT's `choice` in this process: `auto` is
    `gevent` where sockets are gevent's and tracing is off."""
    if choice != "auto":
        return choice
    if tracing:
        return "requests"  # client spans come from the urllib3 instrumentation
    try:
        import geventhttpclient  # noqa: F401 - not on Python 3.10 (requirements.txt)
    except ImportError:
        return "requests"
    from .disconnect import gevent_active

    return "gevent" if gevent_active() else "requests"


def _cooperative_yield() -> Any:
    """`gevent.sleep` where sockets are gevent's, else None.

    Why: a greenlet only yields when it must wait. With a keep-alive client whose next request is
    already there and an upstream that answers before it is read, one greenlet can serve request
    after request while the other connections' answers wait in their sockets: at wrk -c32 through
    the gevent transport, p99 was 335-830 ms (the naive relay: 60-90). One `sleep(0)` before each
    upstream call (about 5 us) puts every request behind those already waiting: p99 89 ms."""
    from .disconnect import gevent_active

    if not gevent_active():
        return None
    import gevent

    return gevent.sleep


class Upstream:
    """The worker's HTTP client: one pooled adapter (keep-alive), `requests`' own or the gevent
    transport (app/transport.py) behind the same interface.

    `send` hands a prepared request straight to the adapter. `Session.request`
    would re-merge settings, cookies, hooks and proxy environment on every call,
    about a third of the proxy's CPU per request, for nothing a relay needs:
    the client's headers and body go upstream as they are.
    """

    def __init__(self, pool_size: int = 1024, transport: str = "requests") -> None:
        session = requests.Session()
        session.trust_env = False
        session.headers.clear()
        self.transport = transport
        self._pause = _cooperative_yield()
        if transport == "gevent":
            from .transport import GeventAdapter

            self.adapter: HTTPAdapter | GeventAdapter = GeventAdapter()
        else:
            self.adapter = _Adapter(pool_connections=16, pool_maxsize=pool_size, max_retries=0)
        session.mount("http://", self.adapter)
        session.mount("https://", self.adapter)
        self.session = session
        """For the proxy's own side requests (health probes); relayed traffic uses `send`."""

    def send(
        self,
        target: Target,
        method: str,
        url: str,
        headers: dict[str, str],
        body: bytes | IO[bytes] | Iterator[bytes] | None,
        *,
        watch: DisconnectWatch | None = None,
        call: Call | None = None,
        read_timeout: float | None = None,
    ) -> UpstreamReply:
        """Send; the reply's body is still unread. `watch` ends with the reply (or here, on failure);
        `call.abort()` ends it from elsewhere."""
        timeout = (target.connect_timeout, read_timeout if read_timeout is not None else target.read_timeout)
        prepared = requests.PreparedRequest()
        prepared.method = method
        prepared.url = url
        prepared.headers = CaseInsensitiveDict(headers)
        prepared.body = body
        prepared.hooks = {"response": []}
        if body is not None:
            prepared.headers["Content-Length"] = str(len(body))  # never chunked: see body.SizedStream
        elif method in ("POST", "PUT", "PATCH"):
            prepared.headers["Content-Length"] = "0"
        if self._pause is not None:
            self._pause(0)
        token = _CALL.set(call)
        try:
            with mapped_errors(target):
                return UpstreamReply(self.adapter.send(prepared, stream=True, timeout=timeout), target, watch, call)
        except BaseException:
            if call is not None:
                call.release()
            if watch is not None:
                watch.stop()
            raise
        finally:
            _CALL.reset(token)


class UpstreamReply:
    """An upstream response whose body is read once: decoded, raw, or whole."""

    def __init__(
        self,
        resp: requests.Response,
        target: Target,
        watch: DisconnectWatch | None = None,
        call: Call | None = None,
    ) -> None:
        self.resp = resp
        self.target = target
        self.status = resp.status_code
        self.reason = resp.reason or ""
        lower = getattr(resp, "lower_headers", None)  # the gevent transport has them ready
        self.headers = lower if lower is not None else {k.lower(): v for k, v in resp.headers.items()}
        self._watch = watch
        self._call = call
        self._closed = False

    def chunks(self) -> Iterator[bytes]:
        """Body bytes, content-decoded, as they arrive, whatever the framing.

        `iter_content(None)` only yields per chunk for chunked bodies; for a body
        with a Content-Length or one delimited by close it would wait for the end."""
        raw = self.resp.raw
        with mapped_errors(self.target):
            if raw.chunked and raw.supports_chunked_reads():
                yield from raw.read_chunked(READ_SIZE, decode_content=True)
                return
            while data := raw.read1(READ_SIZE, decode_content=True):
                yield data

    def raw_chunks(self) -> Iterator[bytes]:
        """Body bytes exactly as sent (still content-encoded), for pass-through."""
        with mapped_errors(self.target):
            yield from self.resp.raw.stream(READ_SIZE, decode_content=False)

    def read_all(self, limit: int, *, truncate: bool = False) -> bytes:
        """The decoded body, at most `limit` bytes: beyond it, cut (`truncate`) or a 502. Closes."""
        parts: list[bytes] = []
        size = 0
        try:
            for chunk in self.chunks():
                parts.append(chunk)
                size += len(chunk)
                if size > limit:
                    if truncate:
                        return b"".join(parts)[:limit]
                    raise UpstreamBadResponse(
                        f"Upstream {self.target.origin} sent an answer larger than {limit} bytes (MAX_RESPONSE_BYTES).",
                        code="upstream_response_too_large",
                    )
        finally:
            self.close()
        return b"".join(parts)

    def close(self) -> None:
        """Idempotent: the connection, its `Call` and the disconnect watch all end here."""
        if self._closed:
            return
        self._closed = True
        if self._call is not None:
            self._call.release()
        try:
            self.resp.close()
        finally:
            if self._watch is not None:
                self._watch.stop()


class _FinalResponse(http.client.HTTPResponse):
    """Skips informational answers (102, 103 Early Hints) as http.client does for 100; reads its
    socket through `_BoundedLines`."""

    def __init__(self, sock: socket.socket, *args: object, **kwargs: object) -> None:
        super().__init__(sock, *args, **kwargs)  # type: ignore[arg-type]
        self.fp = _BoundedLines(self.fp)  # type: ignore[assignment]

    def _read_status(self) -> tuple[str, int, str]:
        while True:
            version, status, reason = super()._read_status()
            if not 101 < status < 200:
                return version, status, reason
            http.client._read_headers(self.fp)  # type: ignore[attr-defined]


class _BoundedLines:
    """A response's socket file that refuses a run of more than MAX_LINES lines with no body read
    between them. urllib3 reads a chunked body's trailer lines, and http.client a run of 1xx
    answers, with no bound: an upstream sending either forever would hold the request (a chunk-size
    line is always followed by its chunk's read, and a head is at most 102 lines)."""

    MAX_LINES = 1000

    def __init__(self, fp: IO[bytes]) -> None:
        self._fp = fp
        self._lines = 0

    def readline(self, *args: int) -> bytes:
        self._lines += 1
        if self._lines > self.MAX_LINES:
            raise http.client.LineTooLong(f"more than {self.MAX_LINES} lines in a row (trailers or 1xx answers)")
        return self._fp.readline(*args)

    def read(self, *args: int) -> bytes:
        self._lines = 0
        return self._fp.read(*args)

    def read1(self, *args: int) -> bytes:
        self._lines = 0
        return self._fp.read1(*args)  # type: ignore[attr-defined]

    def readinto(self, b: bytearray) -> int:
        self._lines = 0
        return self._fp.readinto(b)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self._fp, name)


class _Registering:
    """Tells the `Call` being sent which connection carries it (pooled ones included)."""

    def request(self, *args: object, **kwargs: object) -> None:
        call = _CALL.get()
        if call is not None:
            call.connection = self  # type: ignore[assignment]
            if call.aborted:
                raise ConnectionAbortedError("the call was aborted")
        super().request(*args, **kwargs)  # type: ignore[misc]


class _HTTPConnection(_Registering, HTTPConnection):
    response_class = _FinalResponse


class _HTTPSConnection(_Registering, HTTPSConnection):
    response_class = _FinalResponse


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


class _Adapter(HTTPAdapter):
    """requests' adapter, less what a relay never uses on its hot path: proxies (the session
    ignores the environment), cookies, and per-call connection-pool lookups (cached per origin
    and TLS setting). Sending, timeouts, TLS and error mapping are requests' own."""

    def init_poolmanager(self, *args: object, **kwargs: object) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}
        self._pools: dict[tuple[str, object, object], HTTPConnectionPool] = {}

    def get_connection_with_tls_context(
        self, request: requests.PreparedRequest, verify: object, proxies: object = None, cert: object = None
    ) -> HTTPConnectionPool:
        if proxies:
            return super().get_connection_with_tls_context(request, verify, proxies=proxies, cert=cert)
        url = request.url or ""
        key = (url[: url.find("/", url.find("//") + 2)], verify, cert)
        pool = self._pools.get(key)
        if pool is None or pool.pool is None:  # new, or closed when the pool manager evicted it
            pool = super().get_connection_with_tls_context(request, verify, proxies=proxies, cert=cert)
            self._pools[key] = pool
        return pool

    def request_url(self, request: requests.PreparedRequest, proxies: object) -> str:
        return request.path_url if not proxies else super().request_url(request, proxies)

    def build_response(self, req: requests.PreparedRequest, resp: object) -> requests.Response:
        response = requests.Response()
        response.status_code = getattr(resp, "status", None)  # type: ignore[assignment]
        response.headers = CaseInsensitiveDict(getattr(resp, "headers", {}))
        response.raw = resp
        response.reason = getattr(resp, "reason", None)  # type: ignore[assignment]
        response.url = req.url or ""
        response.request = req
        response.connection = self
        return response

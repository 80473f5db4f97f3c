"""A hostile upstream on 127.0.0.1, written on raw sockets so it can misbehave on purpose.

It records every request exactly as it arrived (the request line is read off the
socket, never normalised), plays several servers at once by path, and answers
with the faults a real upstream or a compromised one may send:

    /tenant-a/...               an OpenAI-style server (the proxy's own tenant)
    /tenant-b/...               another tenant's API, which the proxy must never reach
    /process/request/v1/...     a Livepeer BYOC gateway (tests/fakes/livepeer_gateway.py)
    anything else               an OpenAI-style server

Faults (`enqueue` them for the next client request, or set `responder`):
compressed bodies (gzip, deflate, br, zstd; Content-Length or chunked), a
`103 Early Hints` before the real answer, an SSE event that never ends, a huge
JSON body, a JSON answer to a stream request, garbage where JSON is promised,
HEAD answers. Every loop is bounded in count and time: nothing here outlives
`MAX_WAIT` seconds once its peer stops reading, and `stop()` ends it all.
"""

from __future__ import annotations

import gzip
import json
import socket
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

from tests.fakes import livepeer_gateway
from tests.fakes.openai_upstream import Recorded, Reply, _default_reply, chat_chunk, chat_completion

MAX_WAIT = 30.0
"""Longest any connection, read or fault lasts."""
BACKGROUND_AGENT = "cot-proxy-background"
MAX_LINE = 65536
MAX_HEADERS = 200
MAX_BODY = 64 * 1024 * 1024

TENANT_B_SECRET = "tenant-b-secret-data"


class PeerGone(Exception):
    """The proxy closed the connection (or stopped reading for MAX_WAIT seconds)."""


@dataclass
class RawRequest:
    line: bytes
    """The request line exactly as received, without its CRLF."""
    headers: list[tuple[str, str]]
    body: bytes
    raw: bytes
    """Everything read for this request: line, headers, body framing."""
    at: float = field(default_factory=time.monotonic)

    @property
    def method(self) -> str:
        return self.line.split(b" ", 1)[0].decode("latin-1")

    @property
    def target(self) -> str:
        """The request-target as sent (percent-encoding and dots untouched)."""
        parts = self.line.split(b" ")
        return parts[1].decode("latin-1") if len(parts) > 1 else ""

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def query(self) -> str:
        return self.target.partition("?")[2]

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    def json(self) -> Any:
        return json.loads(self.body)

    def recorded(self, path: str | None = None) -> Recorded:
        """As tests/fakes/openai_upstream.py records it, to reuse its answers."""
        return Recorded(
            self.method, self.target if path is None else path, {k.lower(): v for k, v in self.headers}, self.body
        )


class Conn:
    """The server side of one connection: bounded writes, and a way to see the proxy leave."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.close_after = False
        """Set by an answer that wants the connection closed once it is written."""

    def write(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except (OSError, TimeoutError) as exc:  # broken pipe, reset, or MAX_WAIT without the proxy reading
            raise PeerGone(str(exc)) from None


Answer = Callable[[RawRequest, Conn], None]
"""Writes one whole response to the connection (may set `conn.close_after`)."""


# -- writing responses --------------------------------------------------------------------


def _status_line(status: int, reason: str | None = None) -> bytes:
    if reason is None:
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = "Unknown"
    return b"HTTP/1.1 %d %s\r\n" % (status, reason.encode())


def _head(status: int, headers: list[tuple[str, str]] | dict[str, str]) -> bytes:
    items = headers.items() if isinstance(headers, dict) else headers
    out = _status_line(status)
    for k, v in items:
        out += f"{k}: {v}\r\n".encode("latin-1")
    return out + b"\r\n"


def write_response(
    conn: Conn, req: RawRequest, status: int, headers: dict[str, str], parts: list[bytes], *, chunked: bool = False
) -> None:
    """Status, headers and body (`parts` as HTTP chunks, or one Content-Length body). HEAD gets no body."""
    h = dict(headers)
    if chunked:
        h["Transfer-Encoding"] = "chunked"
    else:
        h.setdefault("Content-Length", str(sum(len(p) for p in parts)))
    head = _head(status, h)
    if req.method == "HEAD" or status in (204, 304):
        conn.write(head)
    elif chunked:
        conn.write(head)
        for part in parts:
            if part:
                conn.write(b"%x\r\n%s\r\n" % (len(part), part))
        conn.write(b"0\r\n\r\n")
    else:
        conn.write(head + b"".join(parts))


def reply(r: Reply) -> Answer:
    """An answer from tests/fakes/openai_upstream.py (`json_reply`, `sse_reply`, `Reply`), written as is."""

    def answer(req: RawRequest, conn: Conn) -> None:
        write_response(conn, req, r.status, r.headers, list(r.parts), chunked=r.chunked)

    return answer


def json_answer(
    body: Any, status: int = 200, headers: dict[str, str] | None = None, *, chunked: bool = False
) -> Answer:
    raw = json.dumps(body).encode()

    def answer(req: RawRequest, conn: Conn) -> None:
        write_response(
            conn, req, status, {"Content-Type": "application/json", **(headers or {})}, [raw], chunked=chunked
        )

    return answer


# -- compression --------------------------------------------------------------------------


def _optional(name: str) -> Any:
    try:
        return __import__(name)
    except ImportError:
        return None


brotli = _optional("brotli")
zstandard = _optional("zstandard")
ENCODINGS = ("gzip", "deflate", "deflate-raw", "br", "zstd")
"""`deflate-raw` is `Content-Encoding: deflate` without the zlib wrapper, as some servers send it."""


def encoding_available(encoding: str) -> bool:
    return {"br": brotli is not None, "zstd": zstandard is not None}.get(encoding, True)


def compress(data: bytes, encoding: str) -> tuple[bytes, str]:
    """(compressed bytes, Content-Encoding value)."""
    if encoding == "gzip":
        return gzip.compress(data, mtime=0), "gzip"  # deterministic: the same bytes every time
    if encoding == "deflate":
        return zlib.compress(data), "deflate"
    if encoding == "deflate-raw":
        c = zlib.compressobj(wbits=-15)
        return c.compress(data) + c.flush(), "deflate"
    if encoding == "br":
        return brotli.compress(data), "br"
    if encoding == "zstd":
        return zstandard.ZstdCompressor().compress(data), "zstd"
    raise ValueError(encoding)


def compressed(
    body: bytes,
    encoding: str,
    *,
    content_type: str = "application/json",
    status: int = 200,
    chunked: bool = False,
    pieces: int = 3,
    headers: dict[str, str] | None = None,
) -> Answer:
    """`body` compressed with `encoding`; chunked bodies are cut into `pieces` HTTP chunks mid-stream."""
    data, value = compress(body, encoding)

    def answer(req: RawRequest, conn: Conn) -> None:
        h = {"Content-Type": content_type, "Content-Encoding": value, "Vary": "Accept-Encoding", **(headers or {})}
        if chunked:
            step = max(1, len(data) // pieces)
            parts = [data[i : i + step] for i in range(0, len(data), step)]
        else:
            parts = [data]
        write_response(conn, req, status, h, parts, chunked=chunked)

    return answer


def sse_bytes(events: list[Any], done: bool = True) -> bytes:
    raw = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
    return raw + (b"data: [DONE]\n\n" if done else b"")


STREAM_TEXT = ["Hello", " compressed", " world"]


def chat_stream_bytes(model: str = "fake-model") -> bytes:
    chunks = [
        chat_chunk(role="assistant", content=""),
        *(chat_chunk(t) for t in STREAM_TEXT),
        chat_chunk(finish="stop"),
    ]
    for c in chunks:
        c["model"] = model
    return sse_bytes(chunks)


# -- other faults -------------------------------------------------------------------------


def early_hints(then: Answer, *, count: int = 1) -> Answer:
    """`HTTP/1.1 103 Early Hints` with a Link header (`count` times), then the real answer."""

    def answer(req: RawRequest, conn: Conn) -> None:
        for _ in range(count):
            conn.write(_head(103, [("Link", "</style.css>; rel=preload; as=style")]))
        then(req, conn)

    return answer


class EndlessEvent:
    """An SSE stream whose first event never ends: `data: xxxx...` without a blank line.

    Stops when the proxy goes away, after `max_seconds`, or after `max_bytes`; `done` is set then."""

    def __init__(self, *, piece: int = 16384, max_seconds: float = MAX_WAIT, max_bytes: int = 64 * 1024 * 1024):
        self.piece, self.max_seconds, self.max_bytes = piece, max_seconds, max_bytes
        self.sent = 0
        self.peer_gone = False
        self.done = threading.Event()

    def __call__(self, req: RawRequest, conn: Conn) -> None:
        conn.close_after = True
        chunk = b"x" * self.piece
        frame = b"%x\r\n%s\r\n" % (len(chunk), chunk)
        deadline = time.monotonic() + self.max_seconds
        try:
            conn.write(
                _head(
                    200,
                    {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "Transfer-Encoding": "chunked"},
                )
            )
            conn.write(b"6\r\ndata: \r\n")
            while self.sent < self.max_bytes and time.monotonic() < deadline:
                conn.write(frame)
                self.sent += len(chunk)
            conn.write(b"0\r\n\r\n")
        except PeerGone:
            self.peer_gone = True
        finally:
            self.done.set()


def huge_json(size: int, *, chunked: bool = False, encoding: str | None = None) -> Answer:
    """A valid chat completion of about `size` bytes (spaces in the content), optionally compressed."""
    body = json.dumps(chat_completion(" " * size)).encode()
    if encoding is not None:
        return compressed(body, encoding, chunked=chunked, pieces=8)

    def answer(req: RawRequest, conn: Conn) -> None:
        step = 256 * 1024
        parts = [body[i : i + step] for i in range(0, len(body), step)]
        write_response(conn, req, 200, {"Content-Type": "application/json"}, parts, chunked=chunked)

    return answer


def garbage(content_type: str = "application/json", body: bytes = b"<html>oops", *, status: int = 200) -> Answer:
    def answer(req: RawRequest, conn: Conn) -> None:
        write_response(conn, req, status, {"Content-Type": content_type}, [body])

    return answer


def not_streaming(content_type: str = "application/json") -> Answer:
    """A whole JSON chat completion (status 200) to a request that asked for a stream."""
    return json_answer(chat_completion("not a stream"), headers={"Content-Type": content_type})


# -- the server ---------------------------------------------------------------------------


def normalised(path: str) -> str:
    """The path as a lenient server resolves it: percent-decoded, backslashes as slashes, dot segments
    removed, empty segments merged. Used only to pick who answers; `RawRequest.line` stays raw."""
    path = unquote(path).replace("\\", "/")
    out: list[str] = []
    for seg in path.split("/"):
        if seg in ("", "."):
            continue
        if seg == "..":
            if out:
                out.pop()
            continue
        out.append(seg)
    return "/" + "/".join(out) + ("/" if path.endswith("/") and out else "")


def default_answer(req: RawRequest) -> Answer:
    path = normalised(req.path)
    query = req.target.partition("?")[1] + req.query
    if path.startswith("/tenant-b/"):
        return json_answer({"tenant": "b", "secret": TENANT_B_SECRET, "path": path})
    if path.startswith(livepeer_gateway.PREFIX + "/"):
        return reply(livepeer_gateway.respond(req.recorded(path + query)))
    if path.startswith("/tenant-a/"):
        rec = req.recorded(path[len("/tenant-a") :] + query)
    else:
        rec = req.recorded(path + query)
    try:
        r = _default_reply(rec)
    except (ValueError, KeyError, TypeError):  # a body the OpenAI fake cannot read: say what arrived
        r = Reply(
            parts=[json.dumps({"method": rec.method, "path": rec.path, "body_length": len(rec.body)}).encode()],
            chunked=False,
        )
    return reply(r)


class BadRequest(Exception):
    pass


class Incomplete(Exception):
    """The connection ended before the request's body did (the proxy gave up mid-upload)."""

    def __init__(self, request: RawRequest) -> None:
        super().__init__("request body cut short")
        self.request = request


class HostileUpstream:
    def __init__(self) -> None:
        self.requests: list[RawRequest] = []
        """Every client request relayed to us, in arrival order."""
        self.background: list[RawRequest] = []
        """The proxy's own model-list fetches and probes (its background User-Agent)."""
        self.aborted: list[RawRequest] = []
        """Requests whose connection ended before their body did (never answered)."""
        self.seen: list[bytes] = []
        """Every request line, recorded as soon as its head is read (before the body): all contact."""
        self.arrived = threading.Event()
        self.responder: Callable[[RawRequest], Answer | None] | None = None
        self._queue: list[Answer] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._conns: set[socket.socket] = set()
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(512)
        self._thread = threading.Thread(target=self._accept_loop, daemon=True, name="hostile-upstream")

    @property
    def port(self) -> int:
        return self._listener.getsockname()[1]

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, prefix: str) -> str:
        return self.root + prefix

    @property
    def lines(self) -> list[bytes]:
        return [r.line for r in self.requests]

    def start(self) -> HostileUpstream:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        try:
            self._listener.close()
        except OSError:
            pass
        with self._lock:
            conns = list(self._conns)
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(5)

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.background.clear()
            self.aborted.clear()
            self.seen.clear()
            self._queue.clear()
            self.responder = None
        self.arrived.clear()

    def enqueue(self, *answers: Answer) -> None:
        with self._lock:
            self._queue.extend(answers)

    def wait_for(self, count: int, timeout: float = 10.0) -> bool:
        """True once `count` client requests arrived (bounded polling of our own list)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.requests) >= count:
                return True
            self.arrived.wait(0.05)
            self.arrived.clear()
        return len(self.requests) >= count

    # -- internals ----------------------------------------------------------------------

    def _accept_loop(self) -> None:
        self._listener.settimeout(0.2)
        while not self._stopping.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(sock,), daemon=True, name="hostile-conn").start()

    def _next_answer(self, req: RawRequest) -> Answer:
        with self._lock:
            if self._queue:
                return self._queue.pop(0)
        if self.responder is not None:
            answer = self.responder(req)
            if answer is not None:
                return answer
        return default_answer(req)

    def _serve(self, sock: socket.socket) -> None:
        sock.settimeout(MAX_WAIT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self._conns.add(sock)
        reader = sock.makefile("rb")
        conn = Conn(sock)
        try:
            for _ in range(10_000):  # requests per connection
                if self._stopping.is_set():
                    return
                try:
                    req = self._read_request(reader)
                except Incomplete as exc:
                    with self._lock:
                        self.aborted.append(exc.request)
                    return
                except (BadRequest, OSError, TimeoutError, ValueError):
                    return
                if req is None:
                    return
                background = req.header("user-agent") == BACKGROUND_AGENT
                with self._lock:
                    (self.background if background else self.requests).append(req)
                if not background:
                    self.arrived.set()
                answer = default_answer(req) if background else self._next_answer(req)
                try:
                    answer(req, conn)
                except PeerGone:
                    return
                if conn.close_after or (req.header("connection") or "").lower() == "close":
                    return
        finally:
            with self._lock:
                self._conns.discard(sock)
            try:
                reader.close()
                sock.close()
            except OSError:
                pass

    def _read_request(self, reader: Any) -> RawRequest | None:
        return self._read(reader, self._saw)

    def _saw(self, line: bytes) -> None:
        with self._lock:
            self.seen.append(line)

    @staticmethod
    def _read(reader: Any, on_head: Callable[[bytes], None]) -> RawRequest | None:
        line = reader.readline(MAX_LINE + 1)
        if not line:
            return None
        raw = bytearray(line)
        if not line.endswith(b"\n") or len(line) > MAX_LINE:
            raise BadRequest("request line too long")
        headers: list[tuple[str, str]] = []
        for _ in range(MAX_HEADERS + 1):
            h = reader.readline(MAX_LINE + 1)
            raw += h
            if h in (b"\r\n", b"\n", b""):
                break
            name, _, value = h.decode("latin-1").partition(":")
            headers.append((name.strip(), value.strip()))
        else:
            raise BadRequest("too many headers")
        lowered = {k.lower(): v for k, v in headers}
        if lowered.get("user-agent") != BACKGROUND_AGENT:
            on_head(line.rstrip(b"\r\n"))
        body = bytearray()

        def cut_short() -> Incomplete:
            return Incomplete(RawRequest(line.rstrip(b"\r\n"), headers, bytes(body), bytes(raw)))

        if "chunked" in lowered.get("transfer-encoding", "").lower():
            for _ in range(1_000_000):
                size_line = reader.readline(MAX_LINE)
                if not size_line:
                    raise cut_short()
                raw += size_line
                size = int(size_line.split(b";")[0].strip(), 16)
                if size == 0:
                    for _ in range(MAX_HEADERS):  # trailers
                        t = reader.readline(MAX_LINE)
                        raw += t
                        if t in (b"\r\n", b"\n", b""):
                            break
                    break
                if len(body) + size > MAX_BODY:
                    raise BadRequest("body too large")
                data = reader.read(size)
                body += data
                raw += data
                if len(data) < size:
                    raise cut_short()
                raw += reader.readline(MAX_LINE)
        elif lowered.get("content-length"):
            n = int(lowered["content-length"])
            if n > MAX_BODY:
                raise BadRequest("body too large")
            data = reader.read(n)
            body += data
            raw += data
            if len(data) < n:
                raise cut_short()
        return RawRequest(line.rstrip(b"\r\n"), headers, bytes(body), bytes(raw))

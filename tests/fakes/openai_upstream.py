"""A real OpenAI-style upstream on 127.0.0.1 for tests, answering by script.

Each request is recorded (`FakeUpstream.requests`). With nothing queued it
answers like a small OpenAI server; `enqueue()` scripts the next answers:
canned JSON, SSE chunk sequences with chosen split points and delays, raw
bytes, and faults (drop mid-stream, hang, slow). Disconnects of the proxy's
connection are recorded as `threading.Event`s so tests wait on them instead
of sleeping.
"""

from __future__ import annotations

import base64
import json
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MAX_WAIT = 30.0
BACKGROUND_AGENT = "cot-proxy-background"  # every blocking fault gives up after this long


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    """One scripted answer. `parts` are written one after another as HTTP chunks."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "application/json"})
    parts: list[bytes] = field(default_factory=list)
    delay: float = 0.0
    """Seconds between parts."""
    before_first: float = 0.0
    """Seconds before the status line."""
    gate: threading.Event | None = None
    """If set, wait for it (bounded) after the first part."""
    chunked: bool = True
    drop_after: int | None = None
    """Close the connection after this many parts, without ending the body."""
    hang: bool = False
    """Never answer; record when the proxy closes the connection."""
    endless: bool = False
    """Repeat the last part every `delay` seconds until the proxy goes away."""
    background: bool = False
    """For the proxy's own background requests (model lists, probes) instead of client traffic."""

    def matches(self, rec: Recorded) -> bool:
        return self.background == (rec.headers.get("user-agent") == BACKGROUND_AGENT)


def json_reply(body: Any, status: int = 200, headers: dict[str, str] | None = None, **kw: Any) -> Reply:
    h = {"Content-Type": "application/json"}
    h.update(headers or {})
    return Reply(status=status, headers=h, parts=[json.dumps(body).encode()], chunked=False, **kw)


def sse_reply(events: list[Any], *, splits: list[int] | None = None, done: bool = True, **kw: Any) -> Reply:
    """SSE of `events` (dicts become `data: {json}`; bytes pass as written).

    `splits`: byte offsets at which the whole stream is cut into parts."""
    raw = b""
    for e in events:
        raw += e if isinstance(e, bytes) else b"data: " + json.dumps(e).encode() + b"\n\n"
    if done:
        raw += b"data: [DONE]\n\n"
    if splits is None:
        parts = _split_events(raw)
    else:
        cuts = [0, *sorted(splits), len(raw)]
        parts = [raw[a:b] for a, b in zip(cuts, cuts[1:], strict=False) if b > a]
    headers = {"Content-Type": "text/event-stream"}
    headers.update(kw.pop("headers", {}))
    return Reply(headers=headers, parts=parts, **kw)


def _split_events(raw: bytes) -> list[bytes]:
    out, start = [], 0
    while True:
        i = raw.find(b"\n\n", start)
        if i < 0:
            break
        out.append(raw[start : i + 2])
        start = i + 2
    if start < len(raw):
        out.append(raw[start:])
    return out


def chat_chunk(
    content: str | None = None,
    *,
    finish: str | None = None,
    role: str | None = None,
    index: int = 0,
    **delta_extra: Any,
) -> dict[str, Any]:
    delta: dict[str, Any] = {}
    if role:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    delta.update(delta_extra)
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "fake-model",
        "choices": [{"index": index, "delta": delta, "finish_reason": finish}],
    }


def chat_completion(content: str, model: str = "fake-model", **message_extra: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1700000000,
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content, **message_extra}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
    }


def _default_reply(rec: Recorded) -> Reply:
    path = rec.path.split("?")[0]
    body: Any = None
    if rec.body and rec.headers.get("content-type", "").startswith("application/json"):
        body = rec.json()
    if path.endswith("/chat/completions") and isinstance(body, dict):
        model = body.get("model", "fake-model")
        if body.get("stream"):
            chunks = [
                chat_chunk(role="assistant", content=""),
                chat_chunk("Hello"),
                chat_chunk(" from"),
                chat_chunk(" upstream"),
                chat_chunk(finish="stop"),
            ]
            for c in chunks:
                c["model"] = model
            if (body.get("stream_options") or {}).get("include_usage"):
                chunks.append(
                    {
                        "id": "chatcmpl-fake",
                        "object": "chat.completion.chunk",
                        "created": 1700000000,
                        "model": model,
                        "choices": [],
                        "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6},
                    }
                )
            return sse_reply(chunks)
        return json_reply(chat_completion("Hello from upstream", model))
    if path.endswith("/responses") and isinstance(body, dict) and body.get("stream"):
        # A Responses API stream: named events, no [DONE] (a JSON body would be no answer to a stream).
        resp = {"id": "resp_fake", "object": "response", "status": "completed", "output": []}
        return sse_reply(
            [
                f"event: {t}\ndata: {json.dumps({'type': t, 'sequence_number': i, 'response': resp})}\n\n".encode()
                for i, t in enumerate(("response.created", "response.completed"))
            ],
            done=False,
        )
    if path.endswith("/messages") and isinstance(body, dict) and body.get("stream"):
        # An Anthropic Messages stream: named events, no [DONE].
        message = {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": "fake-model",
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 1, "output_tokens": 0},
        }
        events = [
            ("message_start", {"type": "message_start", "message": message}),
            ("message_stop", {"type": "message_stop"}),
        ]
        return sse_reply([f"event: {t}\ndata: {json.dumps(d)}\n\n".encode() for t, d in events], done=False)
    if path.endswith("/completions") and isinstance(body, dict):
        if body.get("stream"):
            base = {"id": "cmpl-fake", "object": "text_completion", "created": 1700000000, "model": "fake-model"}
            return sse_reply(
                [
                    {**base, "choices": [{"index": 0, "text": "Hi", "logprobs": None, "finish_reason": None}]},
                    {**base, "choices": [{"index": 0, "text": "!", "logprobs": None, "finish_reason": "stop"}]},
                ]
            )
        return json_reply(
            {
                "id": "cmpl-fake",
                "object": "text_completion",
                "created": 1700000000,
                "model": "fake-model",
                "choices": [{"index": 0, "text": "Hi!", "logprobs": None, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
        )
    if path.endswith("/embeddings") and isinstance(body, dict):
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        vec = [0.6, 0.8, 0.0]
        data = []
        for i, _ in enumerate(inputs):
            emb: Any = vec
            if body.get("encoding_format") == "base64":
                emb = base64.b64encode(struct.pack("<3f", *vec)).decode()
            data.append({"object": "embedding", "index": i, "embedding": emb})
        return json_reply(
            {
                "object": "list",
                "data": data,
                "model": body.get("model", "fake-embed"),
                "usage": {"prompt_tokens": 2, "total_tokens": 2},
            }
        )
    if path.endswith("/models"):
        return json_reply(
            {
                "object": "list",
                "data": [{"id": "fake-model", "object": "model", "created": 1700000000, "owned_by": "fake"}],
            }
        )
    return json_reply({"method": rec.method, "path": rec.path, "body_length": len(rec.body)})


class _Server(ThreadingHTTPServer):
    request_queue_size = 512  # the default 5 refuses connections in a burst from several workers

    def server_bind(self) -> None:
        super().server_bind()
        # Accepted sockets inherit it: no Nagle + delayed-ACK stall (~40 ms) between header and body writes.
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class FakeUpstream:
    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.background: list[Recorded] = []
        self.arrived = threading.Event()
        """Set when a request has been read (cleared by `reset`)."""
        self.disconnected = threading.Event()
        """Set when the proxy closed a connection we were streaming to or hanging on."""
        self.disconnected_at: float | None = None
        self.responder: Callable[[Recorded], Reply] | None = None
        self._queue: list[Reply] = []
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.root + "/v1/"

    def start(self) -> FakeUpstream:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.background.clear()
            self._queue.clear()
            self.responder = None
        self.arrived.clear()
        self.disconnected.clear()
        self.disconnected_at = None

    def enqueue(self, *replies: Reply) -> None:
        with self._lock:
            self._queue.extend(replies)

    @property
    def last(self) -> Recorded:
        return self.requests[-1]

    def _next_reply(self, rec: Recorded) -> Reply:
        with self._lock:
            for i, reply in enumerate(self._queue):
                if reply.matches(rec):
                    return self._queue.pop(i)
        if self.responder is not None:
            reply = self.responder(rec)
            if reply is not None:
                return reply
        return _default_reply(rec)

    def _mark_disconnected(self) -> None:
        self.disconnected_at = time.monotonic()
        self.disconnected.set()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _read_body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while True:
                        size = int(self.rfile.readline().strip().split(b";")[0], 16)
                        if size == 0:
                            self.rfile.readline()
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _handle(self) -> None:
                rec = Recorded(
                    self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, self._read_body()
                )
                if rec.headers.get("user-agent") == BACKGROUND_AGENT:
                    fake.background.append(rec)  # the proxy's own model-list fetches and probes
                else:
                    fake.requests.append(rec)
                    fake.arrived.set()
                reply = fake._next_reply(rec)
                try:
                    self._send(reply)
                except (BrokenPipeError, ConnectionResetError):
                    fake._mark_disconnected()
                    self.close_connection = True

            def _peer_closed_within(self, seconds: float) -> bool:
                """Wait up to `seconds`; True as soon as the proxy closes the connection."""
                deadline = time.monotonic() + seconds
                while (left := deadline - time.monotonic()) > 0:
                    ready, _, _ = select.select([self.connection], [], [], min(left, 0.05))
                    if ready:
                        try:
                            if self.connection.recv(1, socket.MSG_PEEK) == b"":
                                return True
                        except OSError:
                            return True
                return False

            def _wait_for_close(self) -> None:
                self._peer_closed_within(MAX_WAIT)
                fake._mark_disconnected()
                self.close_connection = True

            def _send(self, reply: Reply) -> None:
                if reply.before_first:
                    time.sleep(reply.before_first)
                if reply.hang:
                    self._wait_for_close()
                    return
                self.send_response(reply.status)
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                if reply.chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                else:
                    self.send_header("Content-Length", str(sum(len(p) for p in reply.parts)))
                self.end_headers()
                self.wfile.flush()
                parts = list(reply.parts)
                deadline = time.monotonic() + MAX_WAIT
                i = 0
                while i < len(parts):
                    if reply.drop_after is not None and i >= reply.drop_after:
                        self.wfile.flush()
                        self.connection.shutdown(socket.SHUT_RDWR)
                        self.close_connection = True
                        return
                    if i and reply.delay and self._peer_closed_within(reply.delay):
                        fake._mark_disconnected()
                        self.close_connection = True
                        return
                    part = parts[i]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part) if reply.chunked else part)
                    self.wfile.flush()
                    if i == 0 and reply.gate is not None:
                        reply.gate.wait(MAX_WAIT)
                    if reply.endless and i == len(parts) - 1 and time.monotonic() < deadline:
                        parts.append(part)
                    i += 1
                if reply.chunked:
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _handle

        return Handler

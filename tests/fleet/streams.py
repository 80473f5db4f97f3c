"""Helpers for the fleet tests: slow scripted streams and a client that reads them whole."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import requests

from tests.fakes.openai_upstream import (
    FakeUpstream,
    Recorded,
    Reply,
    chat_chunk,
    chat_completion,
    json_reply,
    sse_reply,
)

WORDS = [f"w{i} " for i in range(10)]
WHOLE = "".join(WORDS)


USED = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
"""What an answer that is not streamed reports: as many tokens as the proxy estimates for one "hi"
message (3 + 4 + 1) and holds at admission, so a tokens-per-minute limit admits an exact count."""


def slow_streams(upstream: FakeUpstream, words: list[str] = WORDS, delay: float = 0.05) -> None:
    """Every streamed chat completion streams `words`, one event every `delay` seconds, then usage and
    [DONE]; one not streamed answers at once, using `USED`."""

    def reply(rec: Recorded) -> Reply | None:
        if not rec.path.split("?")[0].endswith("/chat/completions"):
            return None
        if not rec.json().get("stream"):
            return json_reply({**chat_completion("hi"), "usage": USED})
        usage = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": "m",
            "choices": [],
            "usage": {"prompt_tokens": 3, "completion_tokens": len(words), "total_tokens": 3 + len(words)},
        }
        events: list[Any] = [chat_chunk(role="assistant", content="")]
        events += [chat_chunk(w) for w in words] + [chat_chunk(finish="stop"), usage]
        return sse_reply(events, delay=delay)

    upstream.responder = reply


class Stream:
    """One streamed chat completion on its own connection (`Connection: close`), read to the end."""

    def __init__(self, url: str, key: str = "k", timeout: float = 30.0, request_id: str | None = None) -> None:
        headers = {"Authorization": f"Bearer {key}", "Connection": "close"}
        if request_id:
            headers["X-Request-ID"] = request_id
        self.request_id = request_id
        self.resp = requests.post(
            url + "/v1/chat/completions",
            stream=True,
            timeout=timeout,
            headers=headers,
            json={
                "model": "m",
                "messages": [{"role": "user", "content": "hi"}],
                "stream": True,
                "stream_options": {"include_usage": True},
            },
        )
        self.status = self.resp.status_code
        self._lines = self.resp.iter_lines()
        self.events: list[bytes] = []

    def first_event(self) -> bytes:
        """Blocks until the first `data:` event arrived (the stream is in flight)."""
        for line in self._lines:
            if line.startswith(b"data: "):
                self.events.append(line[6:])
                return self.events[0]
        raise AssertionError("stream ended before its first event")

    def rest(self) -> Stream:
        for line in self._lines:
            if line.startswith(b"data: "):
                self.events.append(line[6:])
        self.resp.close()
        return self

    @property
    def text(self) -> str:
        out = []
        for raw in self.events:
            if raw != b"[DONE]":
                for choice in json.loads(raw).get("choices", []):
                    out.append(choice.get("delta", {}).get("content") or "")
        return "".join(out)

    @property
    def whole(self) -> bool:
        return self.status == 200 and bool(self.events) and self.events[-1] == b"[DONE]" and self.text == WHOLE


def refused(port: int) -> bool:
    """Nothing listens on `port` any more. A connect that races a killed listener's close is reset:
    not refused yet, so the caller polls again."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return False
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:
        return False


def wait_until(condition: Any, seconds: float, what: str, step: float = 0.02) -> float:
    """Polls `condition` (bounded in time and count); returns the seconds it took."""
    start = time.monotonic()
    for _ in range(int(seconds / step) + 1):
        if condition():
            return time.monotonic() - start
        time.sleep(step)  # polling an outside process's state, not ordering the test's own steps
    raise AssertionError(f"not within {seconds} s: {what}")


@dataclass
class Request:
    """One logical request of a client: its X-Request-ID and what each attempt gave."""

    request_id: str
    attempts: list[str] = field(default_factory=list)
    """`whole`, or what went wrong (an HTTP status, a cut stream, the exception's class)."""
    spans: list[tuple[float, float]] = field(default_factory=list)
    """When each attempt began and ended (time.monotonic)."""

    @property
    def whole(self) -> bool:
        return bool(self.attempts) and self.attempts[-1] == "whole"


def attempt(url: str, key: str, request_id: str) -> str:
    """One stream through `url`, read to the end of the HTTP body: `whole`, or why not. Strict: a
    connection lost after [DONE] but before the body's last chunk counts as cut (and is retried)."""
    try:
        s = Stream(url, key=key, request_id=request_id).rest()
    except requests.RequestException as exc:
        return type(exc).__name__
    if s.whole:
        return "whole"
    return f"http {s.status}" if s.status != 200 else f"cut after {len(s.events)} events"


class Clients:
    """`n` threads, each streaming one chat completion after another through `url` until `stop()`. A request
    that fails (an error, or a stream cut before [DONE]) is sent again with the same X-Request-ID, at most
    `retries` times: what a client does when a replica dies under it. Bounded in streams and time."""

    def __init__(
        self, url: str, key: str, n: int, retries: int = 0, max_each: int = 200, max_seconds: float = 120.0
    ) -> None:
        self.url, self.key, self.retries, self.max_each = url, key, retries, max_each
        self.deadline = time.monotonic() + max_seconds
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(n)]
        for t in self._threads:
            t.start()

    def _run(self, i: int) -> None:
        for j in range(self.max_each):
            if self._stop.is_set() or time.monotonic() > self.deadline:
                return
            req = Request(f"fleet-{i}-{j}-{uuid.uuid4().hex[:12]}")
            for _ in range(1 + self.retries):
                began = time.monotonic()
                req.attempts.append(attempt(self.url, self.key, req.request_id))
                req.spans.append((began, time.monotonic()))
                if req.whole:
                    break
            with self._lock:
                self.requests.append(req)

    def done(self) -> int:
        """Requests finished so far (whole or given up)."""
        return len(self.requests)

    def stop(self, seconds: float = 60.0) -> list[Request]:
        """Let every client finish the request it is on; then the requests, all of them."""
        self._stop.set()
        for t in self._threads:
            t.join(max(self.deadline - time.monotonic(), 0) + seconds)
        assert not any(t.is_alive() for t in self._threads), "a client did not finish its last request"
        return list(self.requests)

"""Helpers for the fleet tests: slow scripted streams and a client that reads them whole."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import requests

from tests.fakes.openai_upstream import FakeUpstream, Recorded, Reply, chat_chunk, sse_reply

WORDS = [f"w{i} " for i in range(10)]
WHOLE = "".join(WORDS)


def slow_streams(upstream: FakeUpstream, words: list[str] = WORDS, delay: float = 0.05) -> None:
    """Every chat completion streams `words`, one event every `delay` seconds, then usage and [DONE]."""

    def reply(rec: Recorded) -> Reply | None:
        if not rec.path.split("?")[0].endswith("/chat/completions"):
            return None
        usage = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1700000000, "model": "m",
                 "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": len(words),
                                          "total_tokens": 3 + len(words)}}
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
        self.resp = requests.post(url + "/v1/chat/completions", stream=True, timeout=timeout, headers=headers,
                                  json={"model": "m", "messages": [{"role": "user", "content": "hi"}],
                                        "stream": True, "stream_options": {"include_usage": True}})
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
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return False
    except ConnectionRefusedError:
        return True


def wait_until(condition: Any, seconds: float, what: str, step: float = 0.02) -> float:
    """Polls `condition` (bounded in time and count); returns the seconds it took."""
    start = time.monotonic()
    for _ in range(int(seconds / step) + 1):
        if condition():
            return time.monotonic() - start
        time.sleep(step)  # polling an outside process's state, not ordering the test's own steps
    raise AssertionError(f"not within {seconds} s: {what}")

"""A fake upstream that speaks only chat completions, like llama.cpp, Ollama or an older vLLM.

`/v1/responses` and `/v1/messages` (and anything under them) answer 404 (or the
status given as `missing_status`), so the proxy has to translate. Chat answers
come from a script: `ChatAnswer`s queued with `answer()` are served in order,
then `default` is served; each is rendered as a `chat.completion` JSON body or
as `chat.completion.chunk` SSE events, depending on the request's `stream`.
An answer can carry text, reasoning (as `reasoning_content` deltas or as
`<think>` text in the content), tool calls (streamed as the OpenAI API does:
id and name first, then argument fragments) and usage with
`prompt_tokens_details.cached_tokens`.

What it received is in `requests` (every request) and `chat_bodies()` (the
decoded chat-completions bodies). Everything of `FakeUpstream` still works:
`enqueue()` raw replies (served first, whatever the path), `reset()`, `last`.

    fake = ChatOnlyUpstream().start()
    fake.answer(ChatAnswer(text="It is sunny.", reasoning="The user asks...", cached_tokens=2))
    fake.answer(ChatAnswer(tool_calls=[ToolCall("get_weather", '{"city": "Paris"}')], finish="tool_calls"))
"""

from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .openai_upstream import FakeUpstream, Recorded, Reply, chat_chunk, json_reply, sse_reply

MISSING = ("/v1/responses", "/v1/messages")
"""Routes this upstream does not know."""


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str = "{}"
    """The JSON text of the arguments, as the model wrote it."""
    id: str = ""
    """Empty: `call_<n>` by position."""


@dataclass
class ChatAnswer:
    """One scripted chat answer, rendered as JSON or as a stream."""

    text: str | None = "Hello from upstream"
    reasoning: str | None = None
    reasoning_as: str = "field"
    """`field`: `reasoning_content` (vLLM, DeepSeek); `think`: `<think>...</think>` before the text."""
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish: str = "stop"
    prompt_tokens: int = 11
    completion_tokens: int = 7
    cached_tokens: int | None = None
    """Set: `usage.prompt_tokens_details.cached_tokens`."""
    model: str | None = None
    """None: the request's model."""
    chunk_chars: int = 4
    """Streams: text and reasoning go out this many characters per chunk; arguments in halves."""
    drop_after: int | None = None
    """Streams: close the connection after this many events, mid-answer."""
    status: int = 200
    error: dict[str, Any] | None = None
    """With a status >= 400: the JSON error body (default: an OpenAI error envelope)."""

    def usage(self) -> dict[str, Any]:
        u: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }
        if self.cached_tokens is not None:
            u["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens}
        return u

    def content(self) -> str | None:
        if self.reasoning is not None and self.reasoning_as == "think":
            return f"<think>{self.reasoning}</think>{self.text or ''}"
        return self.text

    def calls(self) -> list[dict[str, Any]]:
        return [
            {"id": c.id or f"call_{i}", "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for i, c in enumerate(self.tool_calls)
        ]

    def message(self) -> dict[str, Any]:
        msg: dict[str, Any] = {"role": "assistant", "content": self.content()}
        if self.reasoning is not None and self.reasoning_as == "field":
            msg["reasoning_content"] = self.reasoning
        if self.tool_calls:
            msg["tool_calls"] = self.calls()
        return msg

    def completion(self, model: str) -> dict[str, Any]:
        return {
            "id": "chatcmpl-chatonly",
            "object": "chat.completion",
            "created": 1700000000,
            "model": self.model or model,
            "choices": [{"index": 0, "message": self.message(), "finish_reason": self.finish}],
            "usage": self.usage(),
        }

    def chunks(self, model: str, include_usage: bool) -> list[dict[str, Any]]:
        out = [chat_chunk(role="assistant", content="")]
        n = max(1, self.chunk_chars)
        if self.reasoning is not None and self.reasoning_as == "field":
            out += [chat_chunk(reasoning_content=self.reasoning[i : i + n]) for i in range(0, len(self.reasoning), n)]
        text = self.content() or ""
        out += [chat_chunk(text[i : i + n]) for i in range(0, len(text), n)]
        for i, call in enumerate(self.calls()):
            args = call["function"]["arguments"]
            half = len(args) // 2
            out.append(
                chat_chunk(
                    tool_calls=[
                        {
                            "index": i,
                            "id": call["id"],
                            "type": "function",
                            "function": {"name": call["function"]["name"], "arguments": ""},
                        }
                    ]
                )
            )
            out += [
                chat_chunk(tool_calls=[{"index": i, "function": {"arguments": part}}])
                for part in (args[:half], args[half:])
                if part
            ]
        out.append(chat_chunk(finish=self.finish))
        for c in out:
            c["id"], c["model"] = "chatcmpl-chatonly", self.model or model
        if include_usage:
            out.append(
                {
                    "id": "chatcmpl-chatonly",
                    "object": "chat.completion.chunk",
                    "created": 1700000000,
                    "model": self.model or model,
                    "choices": [],
                    "usage": self.usage(),
                }
            )
        return out

    def reply(self, body: dict[str, Any]) -> Reply:
        model = str(body.get("model") or "fake-model")
        if self.status >= 400:
            err = self.error or {
                "error": {"message": "scripted failure", "type": "server_error", "param": None, "code": None}
            }
            return json_reply(err, status=self.status)
        if body.get("stream"):
            include = bool((body.get("stream_options") or {}).get("include_usage"))
            return sse_reply(self.chunks(model, include), drop_after=self.drop_after, done=self.drop_after is None)
        return json_reply(self.completion(model))


class ChatOnlyUpstream(FakeUpstream):
    """Chat completions only; the Responses and Messages routes are missing."""

    def __init__(self, missing_status: int = 404) -> None:
        super().__init__()
        self.missing_status = missing_status
        self.default = ChatAnswer()
        self._answers: deque[ChatAnswer] = deque()
        self._answers_lock = threading.Lock()
        self.responder = self._respond

    def answer(self, *answers: ChatAnswer) -> None:
        """Queue chat answers, served in order to chat-completions requests."""
        with self._answers_lock:
            self._answers.extend(answers)

    def reset(self) -> None:
        super().reset()
        self.responder = self._respond
        self.default = ChatAnswer()
        with self._answers_lock:
            self._answers.clear()

    def chat_bodies(self) -> list[dict[str, Any]]:
        """The decoded bodies of the chat-completions requests received, in order."""
        return [r.json() for r in self.requests if r.path.split("?")[0].endswith("/chat/completions")]

    def missing_hits(self) -> list[Recorded]:
        """Requests that reached a route this upstream does not know."""
        return [r for r in self.requests if _missing(r.path)]

    def _respond(self, rec: Recorded) -> Reply | None:
        path = rec.path.split("?")[0]
        if _missing(path):
            # llama.cpp's shape; Ollama answers text/plain "404 page not found", either must be handled.
            return json_reply(
                {"error": {"code": self.missing_status, "message": "File Not Found", "type": "not_found_error"}},
                status=self.missing_status,
            )
        if path.endswith("/chat/completions"):
            try:
                body = json.loads(rec.body)
            except ValueError:
                return json_reply({"error": {"message": "bad JSON", "type": "invalid_request_error"}}, status=400)
            with self._answers_lock:
                scripted = self._answers.popleft() if self._answers else self.default
            return scripted.reply(body if isinstance(body, dict) else {})
        return None  # models and the rest: the plain fake's answers


def _missing(path: str) -> bool:
    path = path.split("?")[0]
    return any(path == m or path.startswith(m + "/") for m in MISSING)

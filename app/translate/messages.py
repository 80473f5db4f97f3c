"""Anthropic Messages (`/v1/messages`) <-> chat completions: pure conversions and the stream state machine.

Why: Claude Code and other Anthropic clients speak `/v1/messages`; most self-hosted servers
(llama.cpp, Ollama, older vLLM) speak only chat completions. Nothing here touches Flask or the
network: `validate` checks what the translation relies on, `to_chat` turns a Messages request into a
chat-completions body, `from_chat` turns a chat completion into a Messages answer, and `MessageStream`
turns chat chunks into the Anthropic event sequence (`message_start`, `content_block_*`,
`message_delta`, `message_stop`) the `anthropic` SDK's accumulator expects. `ANTHROPIC_ERRORS` writes
every error the proxy makes in Anthropic's shape. The transform steps that use these live in
app/translate/messages_steps.py.

Mapping choices (docs/translation.md has the full table):
- `system` (string or text blocks) becomes one system message; text blocks of a turn are joined.
- `tool_result` blocks become `tool` messages placed before the rest of their user turn (chat
  wants them right after the assistant's `tool_calls`); images inside them go into the user message
  that follows.
- `thinking` / `redacted_thinking` blocks sent back by the client are dropped (chat servers have
  no signed reasoning to continue); server tools (no `input_schema`: web search, code execution)
  cannot run on a chat server and are dropped.
- Usage: `input_tokens` = prompt - cached, `cache_read_input_tokens` = cached (Anthropic counts the
  two apart; OpenAI's prompt_tokens includes the cached part).
- Tool arguments in streams are buffered per call and sent as one `input_json_delta` when the call
  is complete, always valid JSON: a model's malformed arguments would otherwise break the SDK's
  partial-JSON parser mid-stream.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..access.usage import estimate_prompt_tokens, estimate_text_tokens
from ..errors import ErrorShape, InvalidRequest, ProxyError, UpstreamBadResponse
from ..sse import Event
from ..validation import check_model

log = logging.getLogger("cot_proxy.translate")

ROLES = ("user", "assistant")
TOOL_CHOICES = ("auto", "any", "tool", "none")
STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
IGNORED_BLOCKS = frozenset({"thinking", "redacted_thinking"})
SAMPLING = ("temperature", "top_p", "top_k")
SHOW_MAX = 60


# -- errors -------------------------------------------------------------------------------------------


def error_type(status: int, code: str | None = None) -> str:
    """Anthropic's error `type` for an HTTP status (what its SDK keys its exceptions on is the status)."""
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 404:
        return "not_found_error"
    if status == 413:
        return "request_too_large"
    if status == 429:
        return "rate_limit_error"
    if status in (503, 529) and code != "cancelled":
        return "overloaded_error"
    if status >= 500:
        return "api_error"
    return "invalid_request_error"


def error_body(status: int, message: str, code: str | None = None) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type(status, code), "message": message}}


class AnthropicErrors(ErrorShape):
    """`{"type": "error", "error": {"type", "message"}}`; in a stream, an `event: error` event."""

    def body(self, error: ProxyError) -> dict[str, Any]:
        return error_body(error.status, error.message, error.code)

    def event(self, error: ProxyError) -> bytes:
        return sse_event("error", self.body(error)).raw


ANTHROPIC_ERRORS = AnthropicErrors()


def upstream_error(status: int, data: Any) -> dict[str, Any]:
    """An upstream's error body (OpenAI envelope, Anthropic shape or anything else) in Anthropic's shape."""
    if isinstance(data, dict) and data.get("type") == "error" and isinstance(data.get("error"), dict):
        return data
    message: Any = None
    if isinstance(data, dict):
        inner = data.get("error")
        message = inner.get("message") if isinstance(inner, dict) else inner
        message = message or data.get("message") or data.get("detail")
    if not isinstance(message, str) or not message:
        message = f"The upstream answered HTTP {status}."
    return error_body(status, message)


# -- validation -----------------------------------------------------------------------------------------


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= SHOW_MAX else text[:SHOW_MAX] + "…"


def _bad(where: str, what: str) -> InvalidRequest:
    return InvalidRequest(f"{where}: {what}.", param=where)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def validate(body: dict[str, Any]) -> None:
    """The shapes the translation relies on (also checked when the request passes through, so a bad
    request gets the same 400 whatever the upstream speaks). Unknown fields pass."""
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise _bad("model", "required, a non-empty string")
    check_model(body)
    max_tokens = body.get("max_tokens")
    if not _is_int(max_tokens) or max_tokens < 1:
        raise _bad("max_tokens", f"required, a positive integer (got {_show(max_tokens)})")
    _system(body.get("system"))
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages", "required, a non-empty list of messages")
    for i, message in enumerate(messages):
        _message(message, f"messages.{i}")
    for name in SAMPLING:
        value = body.get(name)
        if value is not None and not (_is_int(value) if name == "top_k" else _is_number(value)):
            raise _bad(name, f"must be {'an integer' if name == 'top_k' else 'a number'} (got {_show(value)})")
    if body.get("stream") is not None and not isinstance(body["stream"], bool):
        raise _bad("stream", f"must be a boolean (got {_show(body['stream'])})")
    stops = body.get("stop_sequences")
    if stops is not None and (not isinstance(stops, list) or not all(isinstance(s, str) for s in stops)):
        raise _bad("stop_sequences", "must be a list of strings")
    _tools(body.get("tools"))
    _tool_choice(body.get("tool_choice"))
    thinking = body.get("thinking")
    if thinking is not None and (not isinstance(thinking, dict) or not isinstance(thinking.get("type"), str)):
        raise _bad("thinking", "must be an object with a string 'type' (enabled, disabled)")


def _system(system: Any) -> None:
    if system is None or isinstance(system, str):
        return
    if not isinstance(system, list):
        raise _bad("system", "must be a string or a list of text blocks")
    for j, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
            raise _bad(f"system.{j}", "must be a text block with a string 'text'")


def _message(message: Any, where: str) -> None:
    if not isinstance(message, dict):
        raise _bad(where, "must be an object with 'role' and 'content'")
    if message.get("role") not in ROLES:
        raise _bad(f"{where}.role", f"must be 'user' or 'assistant' (got {_show(message.get('role'))})")
    content = message.get("content")
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise _bad(f"{where}.content", "must be a string or a list of content blocks")
    for j, block in enumerate(content):
        _block(block, f"{where}.content.{j}", message["role"])


def _block(block: Any, where: str, role: str) -> None:
    if not isinstance(block, dict) or not isinstance(block.get("type"), str):
        raise _bad(where, "must be an object with a string 'type'")
    check = _BLOCK_CHECKS.get(block["type"])
    if check is not None:  # other types pass as they are
        check(block, where, role)


def _text_block(block: dict[str, Any], where: str, role: str) -> None:
    if not isinstance(block.get("text"), str):
        raise _bad(f"{where}.text", "must be a string")


def _tool_use_block(block: dict[str, Any], where: str, role: str) -> None:
    """An assistant's call: its id and name non-empty, its input an object."""
    if role != "assistant":
        raise _bad(where, "tool_use blocks belong to assistant messages")
    for name in ("id", "name"):
        if not isinstance(block.get(name), str) or not block[name]:
            raise _bad(f"{where}.{name}", "must be a non-empty string")
    if not isinstance(block.get("input"), dict):
        raise _bad(f"{where}.input", "must be an object")


def _tool_result_block(block: dict[str, Any], where: str, role: str) -> None:
    """A user's answer to a call: names the call; its content a string or blocks, checked as blocks."""
    if role != "user":
        raise _bad(where, "tool_result blocks belong to user messages")
    if not isinstance(block.get("tool_use_id"), str) or not block["tool_use_id"]:
        raise _bad(f"{where}.tool_use_id", "must be a non-empty string")
    inner = block.get("content")
    if inner is not None and not isinstance(inner, str):
        if not isinstance(inner, list):
            raise _bad(f"{where}.content", "must be a string or a list of text and image blocks")
        for k, part in enumerate(inner):
            _block(part, f"{where}.content.{k}", role)


def _image(block: dict[str, Any], where: str) -> None:
    source = block.get("source")
    if not isinstance(source, dict):
        raise _bad(f"{where}.source", "must be an object")
    if source.get("type") == "base64":
        if not isinstance(source.get("media_type"), str) or not isinstance(source.get("data"), str):
            raise _bad(f"{where}.source", "a base64 image needs string 'media_type' and 'data'")
    elif source.get("type") == "url":
        if not isinstance(source.get("url"), str):
            raise _bad(f"{where}.source.url", "must be a string")
    else:
        raise _bad(f"{where}.source.type", f"must be 'base64' or 'url' (got {_show(source.get('type'))})")


# Content block type -> its check (block, where, role); types not here are passed on unchecked.
_BLOCK_CHECKS: dict[str, Callable[[dict[str, Any], str, str], None]] = {
    "text": _text_block,
    "image": lambda block, where, role: _image(block, where),
    "tool_use": _tool_use_block,
    "tool_result": _tool_result_block,
}


def _tools(tools: Any) -> None:
    if tools is None:
        return
    if not isinstance(tools, list):
        raise _bad("tools", "must be a list of tools")
    for i, tool in enumerate(tools):
        where = f"tools.{i}"
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str) or not tool["name"]:
            raise _bad(where, "must be an object with a non-empty string 'name'")
        if "input_schema" in tool and not isinstance(tool["input_schema"], dict):
            raise _bad(f"{where}.input_schema", "must be a JSON Schema object")
        if tool.get("description") is not None and not isinstance(tool["description"], str):
            raise _bad(f"{where}.description", "must be a string")


def _tool_choice(choice: Any) -> None:
    if choice is None:
        return
    if not isinstance(choice, dict) or choice.get("type") not in TOOL_CHOICES:
        raise _bad("tool_choice", f"must be an object whose 'type' is one of {', '.join(TOOL_CHOICES)}")
    if choice["type"] == "tool" and (not isinstance(choice.get("name"), str) or not choice["name"]):
        raise _bad("tool_choice.name", "required with type 'tool', a non-empty string")


# -- request: Messages -> chat completions ------------------------------------------------------------


def thinking_enabled(body: Any) -> bool:
    thinking = body.get("thinking") if isinstance(body, dict) else None
    return isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive")


def to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """A validated Messages request as a chat-completions body. `metadata` and `thinking` stay here
    (chat servers have no field for them; reasoning comes back through the think step)."""
    messages: list[dict[str, Any]] = []
    system = _text_of(body.get("system"))
    if system:
        messages.append({"role": "system", "content": system})
    for i, message in enumerate(body["messages"]):
        messages.extend(_chat_messages(message, f"messages.{i}"))
    out: dict[str, Any] = {"model": body["model"], "messages": messages, "max_tokens": body["max_tokens"]}
    for name in SAMPLING:
        if body.get(name) is not None:
            out[name] = body[name]
    if body.get("stop_sequences"):
        out["stop"] = list(body["stop_sequences"])
    if body.get("stream"):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    tools = [_chat_tool(t) for t in body.get("tools") or () if "input_schema" in t or t.get("type") == "custom"]
    if tools:
        out["tools"] = tools
        choice = body.get("tool_choice")
        if choice is not None:
            out["tool_choice"] = _chat_tool_choice(choice)
            if choice.get("disable_parallel_tool_use") is True:
                out["parallel_tool_calls"] = False
    return out


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(b["text"] for b in content if isinstance(b, dict) and b.get("type") == "text")
    return ""


def _chat_tool(tool: dict[str, Any]) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool["name"], "parameters": tool.get("input_schema") or {"type": "object"}}
    if tool.get("description"):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


def _chat_tool_choice(choice: dict[str, Any]) -> Any:
    kind = choice["type"]
    if kind == "tool":
        return {"type": "function", "function": {"name": choice["name"]}}
    return {"auto": "auto", "any": "required", "none": "none"}[kind]


def _chat_messages(message: dict[str, Any], where: str) -> list[dict[str, Any]]:
    role, content = message["role"], message["content"]
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if role == "assistant":
        return [_assistant(content, where)]
    out: list[dict[str, Any]] = []
    images: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        if block["type"] == "tool_result":
            tool_message, result_images = _tool_result(block, f"{where}.content.{j}")
            out.append(tool_message)
            images.extend(result_images)
        else:
            part = _part(block, f"{where}.content.{j}")
            if part is not None:
                parts.append(part)
    # Every tool message first (chat wants them right after the assistant's calls), then one user message.
    if images or parts or not out:
        out.append({"role": "user", "content": _chat_content(images + parts)})
    return out


def _assistant(content: list[dict[str, Any]], where: str) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        kind = block["type"]
        if kind == "tool_use":
            calls.append(
                {
                    "id": block["id"],
                    "type": "function",
                    "function": {"name": block["name"], "arguments": orjson.dumps(block["input"]).decode()},
                }
            )
        elif kind == "text":
            texts.append(block["text"])
        elif kind not in IGNORED_BLOCKS:
            raise _unsupported(f"{where}.content.{j}", kind)
    out: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    if calls:
        out["tool_calls"] = calls
    return out


def _tool_result(block: dict[str, Any], where: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    inner = block.get("content")
    texts: list[str] = []
    images: list[dict[str, Any]] = []
    if isinstance(inner, str):
        texts.append(inner)
    for k, part in enumerate(inner if isinstance(inner, list) else ()):
        converted = _part(part, f"{where}.content.{k}")
        if converted is None:
            continue
        if converted["type"] == "text":
            texts.append(converted["text"])
        else:
            images.append(converted)
    return {"role": "tool", "tool_call_id": block["tool_use_id"], "content": "\n".join(texts)}, images


def _part(block: dict[str, Any], where: str) -> dict[str, Any] | None:
    """One user content block as a chat content part; None for what chat cannot carry and may drop."""
    kind = block["type"]
    if kind == "text":
        return {"type": "text", "text": block["text"]}
    if kind == "image":
        source = block["source"]
        url = source["url"] if source["type"] == "url" else f"data:{source['media_type']};base64,{source['data']}"
        return {"type": "image_url", "image_url": {"url": url}}
    if kind == "document":
        source = block.get("source")
        if isinstance(source, dict) and source.get("type") == "text" and isinstance(source.get("data"), str):
            return {"type": "text", "text": source["data"]}
        raise InvalidRequest(
            f"{where}: only plain-text documents can be sent to a chat-completions upstream.", param=where
        )
    if kind in IGNORED_BLOCKS:
        return None
    raise _unsupported(where, kind)


def _unsupported(where: str, kind: str) -> InvalidRequest:
    return InvalidRequest(
        f"{where}: content blocks of type {_show(kind)} cannot be sent to a chat-completions upstream.",
        param=f"{where}.type",
    )


def _chat_content(parts: list[dict[str, Any]]) -> Any:
    """Text only: one string (every chat server takes it); with images: the list of parts."""
    if all(p["type"] == "text" for p in parts):
        return "\n".join(p["text"] for p in parts)
    return parts


def count_tokens(body: dict[str, Any]) -> int:
    """`/v1/messages/count_tokens`: the project's estimate (4 characters a token) of the prompt,
    with the system prompt and the tool definitions."""
    tokens = estimate_prompt_tokens("messages", body)
    tools = body.get("tools")
    if isinstance(tools, list) and tools:
        tokens += estimate_text_tokens(len(orjson.dumps(tools)))
    return tokens


# -- response: chat completion -> Messages --------------------------------------------------------------


def message_id(chat_id: Any) -> str:
    """`msg_` + the upstream's id when it has a usable one, else a random one."""
    if isinstance(chat_id, str) and chat_id and chat_id.isascii() and len(chat_id) <= 128:
        return "msg_" + chat_id.removeprefix("chatcmpl-")
    return "msg_" + secrets.token_hex(12)


def tool_input(arguments: Any, name: str = "") -> dict[str, Any]:
    """A tool call's arguments as the object Anthropic's `input` is; a model's malformed JSON becomes `{}`."""
    if isinstance(arguments, dict):
        return arguments
    if isinstance(arguments, str) and arguments.strip():
        try:
            value = orjson.loads(arguments)
        except orjson.JSONDecodeError:
            value = None
        if isinstance(value, dict):
            return value
        log.warning("tool call %r: arguments are not a JSON object; sent as {}", name)
    return {}


def stop_reason(finish: Any, choice: dict[str, Any], stops: Iterable[str], tool_calls: bool) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence). A matched stop sequence is known when the server says which
    (vLLM's `stop_reason`); chat's `stop` is otherwise a natural end."""
    matched = choice.get("stop_reason")
    if finish == "stop" and isinstance(matched, str) and matched in stops:
        return "stop_sequence", matched
    if tool_calls and finish in (None, "stop", "tool_calls", "function_call"):
        return "tool_use", None
    return STOP_REASONS.get(finish, "end_turn") if isinstance(finish, str) else "end_turn", None


def usage(chat_usage: Any, *, input_estimate: int = 0, output_estimate: int = 0) -> dict[str, int]:
    """Anthropic usage from OpenAI usage; estimates where the upstream reported none."""
    if not isinstance(chat_usage, dict):
        return {"input_tokens": input_estimate, "output_tokens": output_estimate}
    prompt = _count(chat_usage.get("prompt_tokens"))
    details = chat_usage.get("prompt_tokens_details")
    cached = _count(details.get("cached_tokens")) if isinstance(details, dict) else None
    out = {
        "input_tokens": input_estimate if prompt is None else max(prompt - (cached or 0), 0),
        "output_tokens": _count(chat_usage.get("completion_tokens"), output_estimate),
    }
    if cached is not None:
        out["cache_read_input_tokens"] = cached
    return out


def _count(value: Any, default: int | None = None) -> Any:
    return value if _is_int(value) and value >= 0 else default


def _text(value: Any) -> str:
    """A message's or delta's text: a string, or the text parts of a list."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(p.get("text", "") for p in value if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _reasoning(holder: dict[str, Any]) -> str:
    for name in ("reasoning_content", "reasoning"):
        value = holder.get(name)
        if isinstance(value, str) and value:
            return value
    return ""


def _first_choice(data: Any) -> dict[str, Any] | None:
    choices = data.get("choices") if isinstance(data, dict) else None
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        return choices[0]
    return None


def from_chat(data: Any, *, model: str | None, stops: Iterable[str] = (), input_estimate: int = 0) -> dict[str, Any]:
    """A chat completion as a Messages answer: thinking, text, then tool_use blocks."""
    choice = _first_choice(data)
    message = choice.get("message") if choice is not None else None
    if not isinstance(message, dict):
        raise UpstreamBadResponse("The upstream's chat completion has no choices[0].message.")
    content: list[dict[str, Any]] = []
    reasoning = _reasoning(message)
    if reasoning:
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    text = _text(message.get("content"))
    if text:
        content.append({"type": "text", "text": text})
    calls = [c for c in message.get("tool_calls") or () if isinstance(c, dict)]
    for call in calls:
        function = call.get("function") if isinstance(call.get("function"), dict) else {}
        name = function.get("name") if isinstance(function.get("name"), str) else ""
        content.append(
            {
                "type": "tool_use",
                "id": _tool_id(call.get("id")),
                "name": name,
                "input": tool_input(function.get("arguments"), name),
            }
        )
    reason, sequence = stop_reason(choice.get("finish_reason"), choice, list(stops), bool(calls))
    out_chars = len(reasoning) + len(text) + sum(len(str(c.get("input"))) for c in content if c["type"] == "tool_use")
    return {
        "id": message_id(data.get("id")),
        "type": "message",
        "role": "assistant",
        "model": model or str(data.get("model") or ""),
        "content": content,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": usage(
            data.get("usage"), input_estimate=input_estimate, output_estimate=estimate_text_tokens(out_chars)
        ),
    }


def _tool_id(value: Any) -> str:
    return value if isinstance(value, str) and value else "toolu_" + secrets.token_hex(12)


# -- streams: chat chunks -> Anthropic events ------------------------------------------------------------


def sse_event(name: str, data: dict[str, Any]) -> Event:
    """`event: <name>` + `data: <json>`: Anthropic's SSE framing (its SDK dispatches on the name)."""
    return Event(b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n")


@dataclass
class _Call:
    id: str
    name: str
    arguments: list[str] = field(default_factory=list)


@dataclass
class MessageStream:
    """One answer's chat chunks in, Anthropic events out. Blocks are sequential (Anthropic's rule):
    a change of kind (thinking -> text -> tool_use) closes the open block first. Tool calls are
    buffered until complete (the next call, other content or the end) and go out whole."""

    model: str
    stops: tuple[str, ...] = ()
    input_estimate: int = 0
    started: bool = False
    ended: bool = False
    index: int = -1
    open: str | None = None
    """Kind of the open block: `thinking` or `text`."""
    calls: dict[int, _Call] = field(default_factory=dict)
    had_calls: bool = False
    finish: Any = None
    choice: dict[str, Any] = field(default_factory=dict)
    out_chars: int = 0

    def feed(self, chunk: Any) -> list[Event]:
        """Events for one chat chunk (a JSON object); usage-only and foreign chunks give none."""
        out: list[Event] = []
        if self.ended:
            return out
        choice = _first_choice(chunk)
        if not self.started and (choice is not None or isinstance(chunk, dict) and "id" in chunk):
            out.extend(self._start(chunk))
        if choice is None or choice.get("index", 0) != 0:
            return out
        delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
        reasoning = _reasoning(delta)
        if reasoning:
            out.extend(self._text("thinking", reasoning))
        text = _text(delta.get("content"))
        if text:
            out.extend(self._text("text", text))
        for call in delta.get("tool_calls") or ():
            if isinstance(call, dict):
                out.extend(self._call(call))
        if choice.get("finish_reason") is not None:
            self.finish, self.choice = choice["finish_reason"], choice
        return out

    def end(self, chat_usage: Any) -> list[Event]:
        """Close what is open and finish the message: `message_delta` (stop reason, usage), `message_stop`."""
        if self.ended:
            return []
        self.ended = True
        out = [] if self.started else self._start({})
        out.extend(self._close())
        out.extend(self._flush_calls())
        reason, sequence = stop_reason(self.finish, self.choice, self.stops, self.had_calls)
        counts = usage(
            chat_usage, input_estimate=self.input_estimate, output_estimate=estimate_text_tokens(self.out_chars)
        )
        out.append(
            sse_event(
                "message_delta",
                {"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": sequence}, "usage": counts},
            )
        )
        out.append(sse_event("message_stop", {"type": "message_stop"}))
        return out

    def _start(self, chunk: Any) -> list[Event]:
        """`message_start` with the prompt estimate (chat servers report usage only at the end;
        `message_delta` then carries the real counts, which the SDK takes over these)."""
        self.started = True
        message = {
            "id": message_id(chunk.get("id") if isinstance(chunk, dict) else None),
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": self.input_estimate, "output_tokens": 0},
        }
        return [
            sse_event("message_start", {"type": "message_start", "message": message}),
            sse_event("ping", {"type": "ping"}),
        ]

    def _open(self, block: dict[str, Any]) -> Event:
        self.index += 1
        return sse_event(
            "content_block_start", {"type": "content_block_start", "index": self.index, "content_block": block}
        )

    def _close(self) -> list[Event]:
        if self.open is None:
            return []
        self.open = None
        return [sse_event("content_block_stop", {"type": "content_block_stop", "index": self.index})]

    def _text(self, kind: str, text: str) -> list[Event]:
        out = self._flush_calls()
        if self.open != kind:
            out.extend(self._close())
            out.append(
                self._open(
                    {"type": "thinking", "thinking": "", "signature": ""}
                    if kind == "thinking"
                    else {"type": "text", "text": ""}
                )
            )
            self.open = kind
        self.out_chars += len(text)
        delta = (
            {"type": "thinking_delta", "thinking": text} if kind == "thinking" else {"type": "text_delta", "text": text}
        )
        out.append(
            sse_event("content_block_delta", {"type": "content_block_delta", "index": self.index, "delta": delta})
        )
        return out

    def _call(self, call: dict[str, Any]) -> list[Event]:
        index = call.get("index", 0) if _is_int(call.get("index")) else 0
        function = call.get("function") if isinstance(call.get("function"), dict) else {}
        out = self._close()
        if index not in self.calls:
            out.extend(self._flush_calls())  # a new call: the ones before it are complete
            self.calls[index] = _Call(_tool_id(call.get("id")), "")
            self.had_calls = True
        buf = self.calls[index]
        if isinstance(function.get("name"), str):
            buf.name += function["name"]
        if isinstance(function.get("arguments"), str):
            buf.arguments.append(function["arguments"])
            self.out_chars += len(function["arguments"])
        return out

    def _flush_calls(self) -> list[Event]:
        out: list[Event] = []
        for call in self.calls.values():
            arguments = orjson.dumps(tool_input("".join(call.arguments), call.name)).decode()
            out.append(self._open({"type": "tool_use", "id": call.id, "name": call.name, "input": {}}))
            out.append(
                sse_event(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": self.index,
                        "delta": {"type": "input_json_delta", "partial_json": arguments},
                    },
                )
            )
            out.append(sse_event("content_block_stop", {"type": "content_block_stop", "index": self.index}))
        self.calls.clear()
        return out

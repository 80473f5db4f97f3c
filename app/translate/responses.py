"""The OpenAI Responses API (`POST /v1/responses`) over a chat-completions upstream: pure conversions.

- `validate`: the shapes the proxy relies on, for passthrough and translation alike (400, never 500).
- `to_chat`: a Responses request body (plus the stored conversation of `previous_response_id`) becomes
  a chat-completions body; what cannot be said in chat (hosted tools, file inputs, background mode)
  is refused with a 400 naming the field, never dropped silently.
- `from_chat`: a `chat.completion` becomes a `response` object.
- `StreamState`: `chat.completion.chunk`s become the Responses event sequence (`response.created` ...
  `response.completed`), each with its `sequence_number`, in the order the openai SDK's
  `responses.stream()` accumulator checks (every item added is done before the response completes).

Reasoning comes from the chat answer's `reasoning_content` / `reasoning` fields, which the think step
(app/transforms/think.py) fills from `<think>` text in `separate` mode; it becomes a `reasoning` output
item with `reasoning_text` content (streamed as `response.reasoning_text.delta`).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..errors import ErrorShape, InvalidRequest, ProxyError
from ..validation import check_model

REASONING_FIELDS = ("reasoning_content", "reasoning")
INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}
"""chat `finish_reason`s that leave a response `incomplete`, with the reason given."""
ECHOED = (
    "instructions",
    "max_output_tokens",
    "metadata",
    "parallel_tool_calls",
    "previous_response_id",
    "temperature",
    "top_p",
    "tool_choice",
    "tools",
    "user",
)
"""Request fields a response object repeats."""
CUSTOM_PARAMETERS = {
    "type": "object",
    "properties": {"input": {"type": "string"}},
    "required": ["input"],
    "additionalProperties": False,
}
"""What a custom tool takes, as a function: its whole input, one string."""
TEXT_PARTS = frozenset({"input_text", "output_text", "text", "summary_text", "reasoning_text"})
MAX_ITEMS = 10_000
"""Input items per request (the body size bound comes first; this keeps loops short on tiny items)."""


class ResponsesErrors(ErrorShape):
    """The Responses API's errors: OpenAI's envelope as a body; in a stream, an `error` event as the
    Responses API writes it (`type`, `code`, `message`, `param`), also carrying the envelope so the
    openai SDK raises `APIError` on it as on any in-band error."""

    def event(self, error: ProxyError) -> bytes:
        envelope = self.body(error)
        inner = envelope["error"]
        data = {
            "type": "error",
            "code": inner.get("code") or inner.get("type"),
            "message": inner.get("message"),
            "param": inner.get("param"),
            **envelope,
        }
        return b"event: error\ndata: " + orjson.dumps(data) + b"\n\n"


RESPONSES_ERRORS = ResponsesErrors()


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _bad(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param)


def _kind(obj: dict[str, Any], default: str | None = None) -> str | None:
    """`obj["type"]` when it is a string (anything else, even unhashable, is no known type)."""
    kind = obj.get("type", default)
    return kind if isinstance(kind, str) else None


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


# -- request checks ------------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# (field, accepts its value, what it must be): checked in this order, the first wrong one refused.
_TypeChecks = tuple[tuple[str, Callable[[Any], bool], str], ...]
_BOOLEANS: _TypeChecks = tuple(
    (name, lambda v: isinstance(v, bool), "a boolean")
    for name in ("stream", "store", "parallel_tool_calls", "background")
)
_SCALARS: _TypeChecks = (
    *((name, lambda v: isinstance(v, str), "a string") for name in ("instructions", "previous_response_id", "user")),
    ("tools", lambda v: isinstance(v, list), "an array"),
    *((name, _is_number, "a number") for name in ("temperature", "top_p")),
)
_OBJECTS: _TypeChecks = tuple(
    (name, lambda v: isinstance(v, dict), "an object") for name in ("text", "reasoning", "metadata")
)


def _check_types(body: dict[str, Any], checks: _TypeChecks) -> None:
    """Refuse the first field of `checks` that is present (not null) with a value of the wrong type."""
    for name, ok, what in checks:
        value = body.get(name)
        if value is not None and not ok(value):
            raise _bad(f"'{name}' must be {what} (got {_type_name(value)}).", name)


def _check_input(given: Any) -> None:
    """`input`: absent, a string, or at most MAX_ITEMS items that are each an object."""
    if given is not None and not isinstance(given, (str, list)):
        raise _bad(f"'input' must be a string or an array of items (got {_type_name(given)}).", "input")
    if isinstance(given, list):
        if len(given) > MAX_ITEMS:
            raise _bad(f"'input' has more than {MAX_ITEMS} items.", "input")
        for i, item in enumerate(given):
            if not isinstance(item, dict):
                raise _bad(f"'input[{i}]' must be an object (got {_type_name(item)}).", f"input[{i}]")


def validate(body: dict[str, Any]) -> None:
    """The Family check, run before routing (passthrough too): types the proxy itself reads."""
    check_model(body)
    _check_types(body, _BOOLEANS)
    _check_input(body.get("input"))
    _check_types(body, _SCALARS)
    limit = body.get("max_output_tokens")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise _bad("'max_output_tokens' must be a positive integer.", "max_output_tokens")
    _check_types(body, _OBJECTS)


# -- request: Responses -> chat ------------------------------------------------------------------


def _text_of(content: Any, param: str) -> str:
    """The text of message content (a string or text parts), for roles chat wants as plain strings."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad(f"'{param}' must be a string or an array of content parts.", param)
    out = []
    for j, part in enumerate(content):
        if not isinstance(part, dict):
            raise _bad(f"'{param}[{j}]' must be an object.", f"{param}[{j}]")
        if _kind(part) in TEXT_PARTS or _kind(part) == "refusal":
            text = part.get("text", part.get("refusal"))
            if not isinstance(text, str):
                raise _bad(f"'{param}[{j}].text' must be a string.", f"{param}[{j}].text")
            out.append(text)
        else:
            raise _bad(f"'{param}[{j}]': content of type {_kind(part)!r} is not supported here.", f"{param}[{j}].type")
    return "".join(out)


def _user_content(content: Any, param: str) -> str | list[dict[str, Any]]:
    """User content: text and images (chat content parts)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad(f"'{param}' must be a string or an array of content parts.", param)
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        where = f"{param}[{j}]"
        if not isinstance(part, dict):
            raise _bad(f"'{where}' must be an object.", where)
        kind = _kind(part)
        if kind in TEXT_PARTS:
            if not isinstance(part.get("text"), str):
                raise _bad(f"'{where}.text' must be a string.", f"{where}.text")
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "input_image":
            url = part.get("image_url")
            if not isinstance(url, str) or not url:
                raise _bad(
                    f"'{where}.image_url' must be a URL or data URL (file_id images are not supported "
                    "over a chat-completions upstream).",
                    f"{where}.image_url",
                )
            image: dict[str, Any] = {"url": url}
            if isinstance(part.get("detail"), str) and part["detail"] != "auto":
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        else:
            raise _bad(
                f"'{where}': content of type {kind!r} is not supported over a chat-completions upstream.",
                f"{where}.type",
            )
    return parts


def _arguments(value: Any, param: str) -> str:
    if not isinstance(value, str):
        raise _bad(f"'{param}' must be a string of JSON.", param)
    return value


def _output_text(value: Any, param: str) -> str:
    """A function_call_output's `output`: a string, or text parts (joined)."""
    if isinstance(value, str):
        return value
    return _text_of(value, param)


def input_messages(given: Any) -> list[dict[str, Any]]:
    """`input` (a string or items) as chat messages. Consecutive function calls become one assistant
    message with several `tool_calls`, joined to the assistant text just before them."""
    if given is None:
        return []
    if isinstance(given, str):
        return [{"role": "user", "content": given}]
    messages: list[dict[str, Any]] = []
    for i, item in enumerate(given):
        where = f"input[{i}]"
        kind = _kind(item, "message")
        if kind == "message":
            messages.append(_message_of(item, where))
        elif kind in ("function_call", "custom_tool_call"):
            _join_call(messages, _call_of(item, where, kind))
        elif kind in ("function_call_output", "custom_tool_call_output"):
            messages.append(_call_output_of(item, where))
        elif kind == "reasoning":
            continue  # earlier reasoning is not sent back to a chat model (as chat clients do)
        else:
            raise _bad(
                f"'{where}': input items of type {kind!r} are not supported over a chat-completions upstream.",
                f"{where}.type",
            )
    return messages


def _message_of(item: dict[str, Any], where: str) -> dict[str, Any]:
    """A `message` item as a chat message: user content may hold images, the other roles only text."""
    role = item.get("role")
    content = item.get("content")
    if role == "user":
        return {"role": "user", "content": _user_content(content, f"{where}.content")}
    if role in ("system", "developer"):
        return {"role": "system", "content": _text_of(content, f"{where}.content")}
    if role == "assistant":
        return {"role": "assistant", "content": _text_of(content, f"{where}.content")}
    raise _bad(f"'{where}.role' must be user, assistant, system or developer (got {role!r}).", f"{where}.role")


def _call_of(item: dict[str, Any], where: str, kind: str) -> dict[str, Any]:
    """A `function_call` or `custom_tool_call` item as a chat tool call (a custom tool's input wrapped)."""
    name, call_id = item.get("name"), item.get("call_id")
    if not isinstance(name, str) or not name:
        raise _bad(f"'{where}.name' must be a non-empty string.", f"{where}.name")
    if not isinstance(call_id, str) or not call_id:
        raise _bad(f"'{where}.call_id' must be a non-empty string.", f"{where}.call_id")
    if kind == "function_call":
        arguments = _arguments(item.get("arguments"), f"{where}.arguments")
    else:
        arguments = wrap_input(_arguments(item.get("input"), f"{where}.input"))
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _join_call(messages: list[dict[str, Any]], call: dict[str, Any]) -> None:
    """A tool call joins the assistant message just before it (its empty text becomes null), else starts one."""
    last = messages[-1] if messages else None
    if last is not None and last["role"] == "assistant":
        last.setdefault("tool_calls", []).append(call)
        if last.get("content") == "":
            last["content"] = None
    else:
        messages.append({"role": "assistant", "content": None, "tool_calls": [call]})


def _call_output_of(item: dict[str, Any], where: str) -> dict[str, Any]:
    """A `function_call_output` or `custom_tool_call_output` item as a chat `tool` message."""
    call_id = item.get("call_id")
    if not isinstance(call_id, str) or not call_id:
        raise _bad(f"'{where}.call_id' must be a non-empty string.", f"{where}.call_id")
    return {"role": "tool", "tool_call_id": call_id, "content": _output_text(item.get("output"), f"{where}.output")}


def _tools(tools: list[Any]) -> list[dict[str, Any]]:
    out = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise _bad(f"'{where}' must be an object.", where)
        kind = _kind(tool)
        if kind not in ("function", "custom"):
            raise _bad(
                f"'{where}': tools of type {kind!r} are not supported over a chat-completions upstream "
                "(only function and custom tools).",
                f"{where}.type",
            )
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise _bad(f"'{where}.name' must be a non-empty string.", f"{where}.name")
        function: dict[str, Any] = {"name": name}
        if kind == "custom":
            function.update(_custom_function(tool))
        else:
            function.update({k: tool[k] for k in ("description", "parameters", "strict") if tool.get(k) is not None})
        out.append({"type": "function", "function": function})
    return out


def _custom_function(tool: dict[str, Any]) -> dict[str, Any]:
    """A custom (freeform) tool as a function taking one string, `input`; a grammar it names goes into
    the description (a chat server cannot enforce it, the model can still follow it)."""
    description = tool.get("description") if isinstance(tool.get("description"), str) else ""
    fmt = tool.get("format")
    if isinstance(fmt, dict) and _kind(fmt) == "grammar" and isinstance(fmt.get("definition"), str):
        syntax = fmt.get("syntax") if isinstance(fmt.get("syntax"), str) else "grammar"
        description = f"{description}\n\nThe input must follow this {syntax} grammar:\n{fmt['definition']}".strip()
    out: dict[str, Any] = {"parameters": CUSTOM_PARAMETERS}
    if description:
        out["description"] = description
    return out


def wrap_input(text: str) -> str:
    """A custom tool call's input as the arguments of its function."""
    return orjson.dumps({"input": text}).decode()


def unwrap_input(arguments: str) -> str:
    """The function arguments a model wrote for a custom tool, back as its input (as written, if not
    the `{"input": ...}` object it was asked for)."""
    try:
        parsed = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return arguments
    return parsed["input"] if isinstance(parsed, dict) and isinstance(parsed.get("input"), str) else arguments


def custom_names(tools: Any) -> frozenset[str]:
    """The names of the custom tools of a request: their calls come back as `custom_tool_call`s."""
    return frozenset(
        t["name"]
        for t in _list(tools)
        if isinstance(t, dict) and _kind(t) == "custom" and isinstance(t.get("name"), str)
    )


def _tool_choice(choice: Any) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and _kind(choice) in ("function", "custom") and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise _bad(
        '\'tool_choice\' must be auto, none, required or {"type": "function" or "custom", "name": ...} '
        "over a chat-completions upstream.",
        "tool_choice",
    )


def _response_format(text: dict[str, Any]) -> dict[str, Any] | None:
    fmt = text.get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict):
        raise _bad("'text.format' must be an object.", "text.format")
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        return {"type": "json_schema", "json_schema": schema}
    raise _bad(f"'text.format.type' {kind!r} is not supported.", "text.format.type")


def to_chat(body: dict[str, Any], history: list[dict[str, Any]] | None = None) -> tuple[dict[str, Any], list[Any]]:
    """(the chat-completions body, the conversation without instructions) for a Responses request.

    `history` is the stored conversation of `previous_response_id`; as on OpenAI, that response's
    instructions do not carry over (only this request's are sent, as the system message)."""
    if body.get("background"):
        raise _bad("'background' responses are not supported over a chat-completions upstream.", "background")
    conversation = list(history or []) + input_messages(body.get("input"))
    if not conversation:
        raise _bad("'input' is required (a string or a non-empty array of items).", "input")
    messages = list(conversation)
    if isinstance(body.get("instructions"), str) and body["instructions"]:
        messages.insert(0, {"role": "system", "content": body["instructions"]})
    chat: dict[str, Any] = {"messages": messages}
    if isinstance(body.get("model"), str):
        chat["model"] = body["model"]
    _add_options(body, chat)
    if body.get("stream"):
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat, conversation


def _add_options(body: dict[str, Any], chat: dict[str, Any]) -> None:
    """The request's sampling, tool and format options as chat fields, in chat's order (each refused
    with a 400 when chat cannot say it)."""
    for name in ("temperature", "top_p", "parallel_tool_calls", "user"):
        if body.get(name) is not None:
            chat[name] = body[name]
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = body["max_output_tokens"]
    if body.get("tools"):
        chat["tools"] = _tools(body["tools"])
    if body.get("tool_choice") is not None:
        chat["tool_choice"] = _tool_choice(body["tool_choice"])
    text = body.get("text")
    if isinstance(text, dict) and (fmt := _response_format(text)) is not None:
        chat["response_format"] = fmt
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict) and isinstance(reasoning.get("effort"), str):
        chat["reasoning_effort"] = reasoning["effort"]


# -- answer: chat -> Responses -------------------------------------------------------------------


@dataclass
class Skeleton:
    """What every response object of one request repeats (its id, the request's settings)."""

    id: str = field(default_factory=lambda: new_id("resp"))
    created_at: int = field(default_factory=lambda: int(time.time()))
    model: str | None = None
    echoed: dict[str, Any] = field(default_factory=dict)
    store: bool = True
    reasoning: dict[str, Any] | None = None
    text: dict[str, Any] | None = None
    custom: frozenset[str] = frozenset()
    """Custom tools: a call to one is a `custom_tool_call` item."""

    @classmethod
    def of(cls, body: dict[str, Any], model: str | None) -> Skeleton:
        return cls(
            model=model,
            echoed={k: body.get(k) for k in ECHOED},
            store=body.get("store") is not False,
            reasoning=body.get("reasoning"),
            text=body.get("text"),
            custom=custom_names(body.get("tools")),
        )

    def call(self, item_id: str, call_id: str, name: str, arguments: str, status: str = "completed") -> dict[str, Any]:
        """The output item of a tool call: a custom tool's, or a function's."""
        if name in self.custom:
            return {
                "type": "custom_tool_call",
                "id": item_id,
                "call_id": call_id,
                "name": name,
                "input": unwrap_input(arguments) if arguments else "",
                "status": status,
            }
        return call_item(item_id, call_id, name, arguments, status)

    def response(
        self,
        status: str,
        output: list[dict[str, Any]],
        usage: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
        incomplete: str | None = None,
    ) -> dict[str, Any]:
        e = self.echoed
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "error": error,
            "incomplete_details": {"reason": incomplete} if incomplete else None,
            "instructions": e.get("instructions"),
            "max_output_tokens": e.get("max_output_tokens"),
            "model": self.model,
            "output": output,
            "parallel_tool_calls": e.get("parallel_tool_calls") is not False,
            "previous_response_id": e.get("previous_response_id"),
            "reasoning": {"effort": (self.reasoning or {}).get("effort"), "summary": None},
            "store": self.store,
            "temperature": e.get("temperature"),
            "text": self.text or {"format": {"type": "text"}},
            "tool_choice": e.get("tool_choice") or "auto",
            "tools": e.get("tools") or [],
            "top_p": e.get("top_p"),
            "truncation": "disabled",
            "usage": usage,
            "user": e.get("user"),
            "metadata": e.get("metadata") or {},
        }


def usage_of(chat_usage: Any) -> dict[str, Any] | None:
    """chat `usage` in Responses terms (input/output tokens, cached and reasoning details)."""
    if not isinstance(chat_usage, dict):
        return None

    def count(obj: Any, key: str) -> int:
        value = obj.get(key) if isinstance(obj, dict) else None
        return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0

    prompt, completion = count(chat_usage, "prompt_tokens"), count(chat_usage, "completion_tokens")
    total = count(chat_usage, "total_tokens") or prompt + completion
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": count(chat_usage.get("prompt_tokens_details"), "cached_tokens")},
        "output_tokens": completion,
        "output_tokens_details": {
            "reasoning_tokens": count(chat_usage.get("completion_tokens_details"), "reasoning_tokens")
        },
        "total_tokens": total,
    }


def reasoning_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {
        "type": "reasoning",
        "id": item_id,
        "summary": [],
        "status": status,
        "content": [{"type": "reasoning_text", "text": text}] if text or status == "completed" else [],
    }


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(item_id: str, text: str | None, status: str = "completed") -> dict[str, Any]:
    return {
        "type": "message",
        "id": item_id,
        "status": status,
        "role": "assistant",
        "content": [] if text is None else [text_part(text)],
    }


def call_item(item_id: str, call_id: str, name: str, arguments: str, status: str = "completed") -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def _list(value: Any) -> list[Any]:
    """An upstream's list field, or nothing when it sent something else."""
    return value if isinstance(value, list) else []


def _reasoning_in(holder: dict[str, Any]) -> str:
    return next((holder[f] for f in REASONING_FIELDS if isinstance(holder.get(f), str) and holder[f]), "")


def from_chat(data: Any, sk: Skeleton) -> dict[str, Any]:
    """A `chat.completion` as a `response` (the first choice: Responses has no `n`)."""
    choices = data.get("choices") if isinstance(data, dict) else None
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    output: list[dict[str, Any]] = []
    if reasoning := _reasoning_in(message):
        output.append(reasoning_item(new_id("rs"), reasoning))
    content = message.get("content")
    if isinstance(content, str) and content:
        output.append(message_item(new_id("msg"), content))
    for call in _list(message.get("tool_calls")):
        fn = call.get("function") if isinstance(call, dict) else None
        if isinstance(fn, dict) and isinstance(fn.get("name"), str) and fn["name"]:
            args = fn.get("arguments")
            output.append(
                sk.call(
                    new_id("fc"),
                    str(call.get("id") or new_id("call")),
                    fn["name"],
                    args if isinstance(args, str) else "{}",
                )
            )
    incomplete = INCOMPLETE.get(str(choice.get("finish_reason")))
    return sk.response(
        "incomplete" if incomplete else "completed", output, usage_of(data.get("usage")), incomplete=incomplete
    )


def history_of(conversation: list[Any], response: dict[str, Any]) -> list[Any]:
    """The conversation after `response`: what a later `previous_response_id` continues from."""
    messages = list(conversation)
    texts = []
    calls = []
    for item in response.get("output") or ():
        if item.get("type") == "message":
            texts.extend(p.get("text", "") for p in item.get("content") or () if p.get("type") == "output_text")
        elif item.get("type") in ("function_call", "custom_tool_call"):
            arguments = item["arguments"] if item["type"] == "function_call" else wrap_input(item["input"])
            calls.append(
                {"id": item["call_id"], "type": "function", "function": {"name": item["name"], "arguments": arguments}}
            )
    reply: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    if calls:
        reply["tool_calls"] = calls
    messages.append(reply)
    return messages


# -- streams -------------------------------------------------------------------------------------


@dataclass
class _Item:
    index: int
    item: dict[str, Any]
    text: list[str] = field(default_factory=list)


class StreamState:
    """Chat chunks in, Responses events out: `(type, payload)` pairs, numbered as they are made.

    One item is open at a time for text (reasoning, then the message); function calls each get
    their own item, opened on their first fragment, all closed when the answer finishes."""

    def __init__(self, sk: Skeleton) -> None:
        self.sk = sk
        self.seq = 0
        self.started = False
        self.finished: str | None = None
        """The chat `finish_reason`, once seen."""
        self.done_items: dict[int, dict[str, Any]] = {}
        """Items done, by output index."""
        self._open: dict[int, _Item] = {}
        self._reasoning: _Item | None = None
        self._message: _Item | None = None
        self._calls: dict[int, _Item] = {}
        self._next_index = 0
        self.ended = False
        self.final: dict[str, Any] = {}
        """The last response object (completed, incomplete or failed), once `ended`."""

    @property
    def output(self) -> list[dict[str, Any]]:
        """Items done, in output order (text after a tool call is done before it, but comes after it)."""
        return [self.done_items[i] for i in sorted(self.done_items)]

    def _event(self, kind: str, **payload: Any) -> dict[str, Any]:
        out = {"type": kind, "sequence_number": self.seq, **payload}
        self.seq += 1
        return out

    def start(self) -> list[dict[str, Any]]:
        if self.started:
            return []
        self.started = True
        snapshot = self.sk.response("in_progress", [])
        return [
            self._event("response.created", response=snapshot),
            self._event("response.in_progress", response=snapshot),
        ]

    def _add(self, item: dict[str, Any]) -> tuple[_Item, list[dict[str, Any]]]:
        opened = _Item(self._next_index, item)
        self._next_index += 1
        self._open[opened.index] = opened
        return opened, [self._event("response.output_item.added", output_index=opened.index, item=dict(item))]

    def _done(self, opened: _Item, final: dict[str, Any]) -> dict[str, Any]:
        del self._open[opened.index]
        self.done_items[opened.index] = final
        return self._event("response.output_item.done", output_index=opened.index, item=final)

    def _close_reasoning(self) -> list[dict[str, Any]]:
        r, self._reasoning = self._reasoning, None
        if r is None:
            return []
        text = "".join(r.text)
        item_id = r.item["id"]
        return [
            self._event(
                "response.reasoning_text.done", item_id=item_id, output_index=r.index, content_index=0, text=text
            ),
            self._event(
                "response.content_part.done",
                item_id=item_id,
                output_index=r.index,
                content_index=0,
                part={"type": "reasoning_text", "text": text},
            ),
            self._done(r, reasoning_item(item_id, text)),
        ]

    def _close_message(self) -> list[dict[str, Any]]:
        m, self._message = self._message, None
        if m is None:
            return []
        text = "".join(m.text)
        item_id = m.item["id"]
        return [
            self._event(
                "response.output_text.done",
                item_id=item_id,
                output_index=m.index,
                content_index=0,
                text=text,
                logprobs=[],
            ),
            self._event(
                "response.content_part.done",
                item_id=item_id,
                output_index=m.index,
                content_index=0,
                part=text_part(text),
            ),
            self._done(m, message_item(item_id, text)),
        ]

    def _close_calls(self) -> list[dict[str, Any]]:
        out = []
        for c in sorted(self._calls.values(), key=lambda c: c.index):
            args = "".join(c.text)
            it = c.item
            final = self.sk.call(it["id"], it["call_id"], it["name"], args)
            if final["type"] == "custom_tool_call":
                # Arguments stream as JSON; the input is only known whole: one delta, then done.
                where = {"item_id": it["id"], "output_index": c.index}
                out.append(self._event("response.custom_tool_call_input.delta", **where, delta=final["input"]))
                out.append(self._event("response.custom_tool_call_input.done", **where, input=final["input"]))
            else:
                out.append(
                    self._event(
                        "response.function_call_arguments.done",
                        item_id=it["id"],
                        output_index=c.index,
                        name=it["name"],
                        arguments=args,
                    )
                )
            out.append(self._done(c, final))
        self._calls.clear()
        return out

    def feed(self, chunk: Any) -> list[dict[str, Any]]:
        """The events one chat chunk makes (a usage-only chunk makes none)."""
        out = self.start()
        choices = chunk.get("choices") if isinstance(chunk, dict) else None
        if not isinstance(choices, list) or not choices or self.ended:
            return out
        choice = choices[0]
        if not isinstance(choice, dict) or choice.get("index", 0) != 0:
            return out  # Responses has one answer; other choices are not shown
        delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
        if reasoning := _reasoning_in(delta):
            out += self._reasoning_delta(reasoning)
        content = delta.get("content")
        if isinstance(content, str) and content:
            out += self._text_delta(content)
        for call in _list(delta.get("tool_calls")):
            if isinstance(call, dict):
                out += self._call_delta(call)
        if choice.get("finish_reason") is not None:
            self.finished = str(choice["finish_reason"])
            out += self._close_reasoning() + self._close_message() + self._close_calls()
        return out

    def _reasoning_delta(self, text: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if self._reasoning is None:
            out += self._close_message()
            self._reasoning, added = self._add(reasoning_item(new_id("rs"), "", status="in_progress"))
            out += added
            out.append(
                self._event(
                    "response.content_part.added",
                    item_id=self._reasoning.item["id"],
                    output_index=self._reasoning.index,
                    content_index=0,
                    part={"type": "reasoning_text", "text": ""},
                )
            )
        r = self._reasoning
        r.text.append(text)
        out.append(
            self._event(
                "response.reasoning_text.delta", item_id=r.item["id"], output_index=r.index, content_index=0, delta=text
            )
        )
        return out

    def _text_delta(self, text: str) -> list[dict[str, Any]]:
        out = self._close_reasoning()
        if self._message is None:
            self._message, added = self._add(message_item(new_id("msg"), None, status="in_progress"))
            out += added
            out.append(
                self._event(
                    "response.content_part.added",
                    item_id=self._message.item["id"],
                    output_index=self._message.index,
                    content_index=0,
                    part=text_part(""),
                )
            )
        m = self._message
        m.text.append(text)
        out.append(
            self._event(
                "response.output_text.delta",
                item_id=m.item["id"],
                output_index=m.index,
                content_index=0,
                delta=text,
                logprobs=[],
            )
        )
        return out

    def _call_delta(self, call: dict[str, Any]) -> list[dict[str, Any]]:
        index = call.get("index", 0)
        fn = call.get("function") if isinstance(call.get("function"), dict) else {}
        out: list[dict[str, Any]] = []
        c = self._calls.get(index) if isinstance(index, int) else None
        if c is None:
            name = fn.get("name") if isinstance(fn.get("name"), str) else ""
            if not name:
                return out  # a call's first fragment names its function: without one there is no call to show
            out += self._close_reasoning() + self._close_message()
            call_id = call.get("id") if isinstance(call.get("id"), str) and call.get("id") else new_id("call")
            c, added = self._add(self.sk.call(new_id("fc"), call_id, name, "", status="in_progress"))
            self._calls[index if isinstance(index, int) else len(self._calls)] = c
            out += added
        args = fn.get("arguments")
        if isinstance(args, str) and args:
            c.text.append(args)
            if c.item["type"] == "function_call":
                out.append(
                    self._event(
                        "response.function_call_arguments.delta", item_id=c.item["id"], output_index=c.index, delta=args
                    )
                )
        return out

    def finish(self, chat_usage: Any) -> list[dict[str, Any]]:
        """The closing events: every open item done, then `response.completed` (or `incomplete`)."""
        if self.ended:
            return []
        out = self.start() + self._close_reasoning() + self._close_message() + self._close_calls()
        self.ended = True
        incomplete = INCOMPLETE.get(self.finished or "")
        status = "incomplete" if incomplete else "completed"
        final = self.sk.response(status, self.output, usage_of(chat_usage), incomplete=incomplete)
        self.final = final
        out.append(self._event("response.incomplete" if incomplete else "response.completed", response=final))
        return out

    def fail(self, message: str, code: str = "server_error") -> list[dict[str, Any]]:
        """The stream broke off: open items end `incomplete`, then `response.failed`."""
        if self.ended:
            return []
        out = self.start()
        for opened in sorted(self._open.values(), key=lambda o: o.index):
            item = dict(opened.item, status="incomplete")
            if item["type"] == "function_call":
                item["arguments"] = "".join(opened.text)
            elif item["type"] == "custom_tool_call":
                item["input"] = unwrap_input("".join(opened.text))
            elif item["type"] == "message":
                item["content"] = [text_part("".join(opened.text))]
            else:
                item["content"] = [{"type": "reasoning_text", "text": "".join(opened.text)}]
            out.append(self._done(opened, item))
        self._reasoning = self._message = None
        self._calls.clear()
        self.ended = True
        self.final = self.sk.response("failed", self.output, error={"code": code, "message": message})
        out.append(self._event("response.failed", response=self.final))
        return out

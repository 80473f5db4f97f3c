"""Checks on request bodies that every upstream would otherwise answer differently.

Each failure is an `InvalidRequest` (400) whose `param` names the offending field.
Unknown fields are never rejected: they pass through to the upstream.

Two layers:
- `chat`, `completions`, `embeddings` (the families' `validate`, always on): the
  shapes the proxy itself relies on (roles, message and content shapes,
  `tool_calls`, `stream`/`stream_options`, prompt and embedding inputs), and a
  model name without control characters. Whatever passes them, the proxy can
  handle without an error of its own, whatever STRICT_VALIDATION says.
- `strict` (STRICT_VALIDATION, default on, run by the access guard): value
  ranges and caps (MAX_TOKENS_CAP, MAX_N), content and tool definitions, and the
  model name of the JSON families that have no `validate` of their own.

How deep a body nests is checked before either, when the relay reads it
(app/body.py `read_json_object`, MAX_JSON_DEPTH). app/openapi.yaml describes
these checks; tests/fuzz/ holds it to them.
"""

from __future__ import annotations

import re
from typing import Any

from .errors import InvalidRequest

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
SHOW_MAX = 60
"""Characters of an offending value quoted in an error message."""
INT32_MAX = 2**31 - 1
"""Bound of token ids and `dimensions` (JSON integers beyond 64 bits arrive as floats)."""


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= SHOW_MAX else text[:SHOW_MAX] + "…"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def _has_control(text: str) -> bool:
    """C0 controls (CR, LF, NUL, ...), DEL and C1 controls: never part of a name."""
    return _CONTROL.search(text) is not None


def check_model(body: dict[str, Any]) -> None:
    """`model`, if given, is a string without control characters (it may end up in a header)."""
    if "model" not in body:
        return
    model = body["model"]
    if not isinstance(model, str):
        raise InvalidRequest(f"'model' must be a string (got {_show(model)}).", param="model")
    if _has_control(model):
        raise InvalidRequest("'model' must not contain control characters.", param="model")


def _optional_bool(body: dict[str, Any], name: str, where: str | None = None) -> None:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        where = where or name
        raise InvalidRequest(f"'{where}' must be a boolean (got {_show(value)}).", param=where)


def _common(body: dict[str, Any]) -> None:
    check_model(body)
    _optional_bool(body, "stream")
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise InvalidRequest(f"'stream_options' must be an object (got {_show(options)}).", param="stream_options")
        _optional_bool(options, "include_usage", "stream_options.include_usage")


def _content_parts(content: list[Any], param: str) -> None:
    """Only what the proxy reads: a part's `text`, when present, is a string."""
    for j, part in enumerate(content):
        if isinstance(part, dict) and "text" in part and not isinstance(part["text"], str):
            where = f"{param}[{j}].text"
            raise InvalidRequest(f"{where} must be a string.", param=where)


def _tool_calls(calls: Any, param: str) -> None:
    if calls is None:
        return
    if not isinstance(calls, list):
        raise InvalidRequest(f"{param} must be a list of tool call objects.", param=param)
    for k, call in enumerate(calls):
        where = f"{param}[{k}]"
        if not isinstance(call, dict):
            raise InvalidRequest(f"{where} must be an object.", param=where)
        function = call.get("function")
        if function is not None and not isinstance(function, dict):
            raise InvalidRequest(f"{where}.function must be an object.", param=f"{where}.function")
        if isinstance(function, dict) and function.get("name") is not None and not isinstance(function["name"], str):
            raise InvalidRequest(f"{where}.function.name must be a string.", param=f"{where}.function.name")


def chat(body: dict[str, Any]) -> None:
    _common(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty list of message objects.", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidRequest(f"messages[{i}] must be an object.", param=f"messages[{i}]")
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise InvalidRequest(
                f"messages[{i}].role must be one of {', '.join(sorted(ROLES))} (got {_show(role)}).",
                param=f"messages[{i}].role",
            )
        content = message.get("content")
        if isinstance(content, list):
            _content_parts(content, f"messages[{i}].content")
        _tool_calls(message.get("tool_calls"), f"messages[{i}].tool_calls")


def _is_token(value: Any) -> bool:
    return _is_int(value) and 0 <= value <= INT32_MAX


def _text_or_tokens(value: Any, name: str, *, allow_empty: bool) -> None:
    """A string, a list of strings, a list of token ids (0 to 2**31 - 1), or a list of token-id lists."""
    if isinstance(value, str):
        return
    shape = f"'{name}' must be a string, a list of strings, a list of token ids or a list of token-id lists"
    if not isinstance(value, list):
        raise InvalidRequest(f"{shape} (got {_show(value)}).", param=name)
    if not value:
        if allow_empty:
            return
        raise InvalidRequest(f"'{name}' must not be an empty list.", param=name)
    # The first item says which of the list forms this is; every item must be of that form.
    first = value[0]
    if isinstance(first, str):
        fits, form = (lambda v: isinstance(v, str)), "a string"
    elif isinstance(first, list):
        fits, form = (lambda v: isinstance(v, list) and all(_is_token(t) for t in v)), "a list of token ids"
    else:
        fits, form = _is_token, f"a token id (an integer from 0 to {INT32_MAX})"
    for i, item in enumerate(value):
        if not fits(item):
            raise InvalidRequest(f"{shape}: {name}[{i}] must be {form} (got {_show(item)}).", param=f"{name}[{i}]")


def completions(body: dict[str, Any]) -> None:
    _common(body)
    if body.get("prompt") is not None:
        _text_or_tokens(body["prompt"], "prompt", allow_empty=True)


def embeddings(body: dict[str, Any]) -> None:
    _common(body)
    _text_or_tokens(body.get("input"), "input", allow_empty=False)
    fmt = body.get("encoding_format")
    if fmt is not None and fmt not in ("float", "base64"):
        raise InvalidRequest("'encoding_format' must be 'float' or 'base64'.", param="encoding_format")
    dims = body.get("dimensions")
    if dims is not None and (not _is_int(dims) or not 1 <= dims <= INT32_MAX):
        raise InvalidRequest(f"'dimensions' must be a positive integer (got {_show(dims)}).", param="dimensions")


# -- strict checks (STRICT_VALIDATION, default on) ------------------------------
# Run by the access guard after authentication, so they can use the configured
# caps (MAX_TOKENS_CAP, MAX_N). Each names the offending field in `param`.

STOP_MAX = 4
VALIDATED = frozenset({"chat", "completions", "embeddings"})
"""Families whose `validate` above already checked the model name."""
CONTENT_ROLES_NULLABLE = frozenset({"assistant", "function"})


def _positive_int(body: dict[str, Any], name: str, cap: int) -> None:
    if name not in body or body[name] is None:
        return
    value = body[name]
    if not _is_int(value) or value < 1:
        raise InvalidRequest(f"'{name}' must be a positive integer (got {_show(value)}).", param=name)
    if value > cap:
        raise InvalidRequest(f"'{name}' must be at most {cap} (got {_show(value)}).", param=name)


def _sampling(body: dict[str, Any], max_tokens_cap: int, max_n: int) -> None:
    _positive_int(body, "max_tokens", max_tokens_cap)
    _positive_int(body, "max_completion_tokens", max_tokens_cap)
    temperature = body.get("temperature")
    if temperature is not None and (not _is_number(temperature) or not 0 <= temperature <= 2):
        raise InvalidRequest(
            f"'temperature' must be a number from 0 to 2 (got {_show(temperature)}).", param="temperature"
        )
    n = body.get("n")
    if n is not None and (not _is_int(n) or not 1 <= n <= max_n):
        raise InvalidRequest(f"'n' must be an integer from 1 to {max_n} (got {_show(n)}).", param="n")
    stop = body.get("stop")
    if stop is not None and not isinstance(stop, str):
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise InvalidRequest("'stop' must be a string or a list of strings.", param="stop")
        if len(stop) > STOP_MAX:
            raise InvalidRequest(f"'stop' may hold at most {STOP_MAX} strings (got {len(stop)}).", param="stop")


def _content(message: dict[str, Any], i: int) -> None:
    param = f"messages[{i}].content"
    if "content" not in message or message["content"] is None:
        if message.get("role") in CONTENT_ROLES_NULLABLE:
            return  # an assistant turn that only calls tools
        raise InvalidRequest(f"{param} is required for role {_show(message.get('role'))}.", param=param)
    content = message["content"]
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise InvalidRequest(f"{param} must be a string or a list of content parts.", param=param)
    for j, part in enumerate(content):
        where = f"{param}[{j}]"
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise InvalidRequest(f"{where} must be an object with a string 'type'.", param=where)
        if part["type"] == "text" and not isinstance(part.get("text"), str):
            raise InvalidRequest(f"{where}.text must be a string.", param=f"{where}.text")
        if part["type"] == "image_url" and not isinstance(part.get("image_url"), (dict, str)):
            raise InvalidRequest(f"{where}.image_url must be an object with a 'url'.", param=f"{where}.image_url")


def _tools(body: dict[str, Any]) -> None:
    tools = body.get("tools")
    if tools is None:
        return
    if not isinstance(tools, list):
        raise InvalidRequest("'tools' must be a list of tool objects.", param="tools")
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
            raise InvalidRequest(f"{where} must be an object with a string 'type'.", param=where)
        if tool["type"] != "function":
            continue
        function = tool.get("function")
        if not isinstance(function, dict):
            raise InvalidRequest(f"{where}.function must be an object.", param=f"{where}.function")
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequest(f"{where}.function.name must be a non-empty string.", param=f"{where}.function.name")
        if (
            "parameters" in function
            and function["parameters"] is not None
            and not isinstance(function["parameters"], dict)
        ):
            raise InvalidRequest(
                f"{where}.function.parameters must be a JSON Schema object.", param=f"{where}.function.parameters"
            )
        if (
            "description" in function
            and function["description"] is not None
            and not isinstance(function["description"], str)
        ):
            raise InvalidRequest(
                f"{where}.function.description must be a string.", param=f"{where}.function.description"
            )


def strict(family: str, body: Any, *, max_tokens_cap: int, max_n: int) -> None:
    """The strict checks for one request body; for families without checks of their own
    (rerank, video) only the model name."""
    if not isinstance(body, dict):
        return
    if family not in VALIDATED:
        if isinstance(body.get("model"), str):
            check_model(body)
        return
    if family == "embeddings":
        return
    _sampling(body, max_tokens_cap, max_n)
    if family == "chat":
        for i, message in enumerate(body.get("messages") or ()):
            if isinstance(message, dict):
                _content(message, i)
        _tools(body)

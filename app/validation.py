"""Checks on request bodies that every upstream would otherwise answer differently.

Each failure is an `InvalidRequest` whose `param` names the offending field.
Unknown fields are never rejected: they pass through to the upstream.
"""

from __future__ import annotations

from typing import Any

from .errors import InvalidRequest

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


def _common(body: dict[str, Any]) -> None:
    if "model" in body and not isinstance(body["model"], str):
        raise InvalidRequest("'model' must be a string.", param="model")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise InvalidRequest("'stream' must be a boolean.", param="stream")


def chat(body: dict[str, Any]) -> None:
    _common(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty list of message objects.", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidRequest(f"messages[{i}] must be an object.", param=f"messages[{i}]")
        role = message.get("role")
        if role not in ROLES:
            raise InvalidRequest(
                f"messages[{i}].role must be one of {', '.join(sorted(ROLES))} (got {role!r}).",
                param=f"messages[{i}].role",
            )


def completions(body: dict[str, Any]) -> None:
    _common(body)
    if "prompt" in body and not isinstance(body["prompt"], (str, list)):
        raise InvalidRequest("'prompt' must be a string or a list.", param="prompt")


def embeddings(body: dict[str, Any]) -> None:
    _common(body)
    value = body.get("input")
    if not isinstance(value, (str, list)) or (isinstance(value, list) and not value):
        raise InvalidRequest("'input' must be a string or a non-empty list.", param="input")
    fmt = body.get("encoding_format", "float")
    if fmt not in ("float", "base64"):
        raise InvalidRequest("'encoding_format' must be 'float' or 'base64'.", param="encoding_format")


# -- strict checks (STRICT_VALIDATION, default on) ------------------------------
# Run by the access guard after authentication, so they can use the configured
# caps (MAX_TOKENS_CAP, MAX_N). Each names the offending field in `param`.

STOP_MAX = 4
CONTENT_ROLES_NULLABLE = frozenset({"assistant", "function"})


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _positive_int(body: dict[str, Any], name: str, cap: int) -> None:
    if name not in body or body[name] is None:
        return
    value = body[name]
    if not _is_int(value) or value < 1:
        raise InvalidRequest(f"'{name}' must be a positive integer (got {value!r}).", param=name)
    if value > cap:
        raise InvalidRequest(f"'{name}' must be at most {cap} (got {value}).", param=name)


def _sampling(body: dict[str, Any], max_tokens_cap: int, max_n: int) -> None:
    _positive_int(body, "max_tokens", max_tokens_cap)
    _positive_int(body, "max_completion_tokens", max_tokens_cap)
    temperature = body.get("temperature")
    if temperature is not None and (not _is_number(temperature) or not 0 <= temperature <= 2):
        raise InvalidRequest(f"'temperature' must be a number from 0 to 2 (got {temperature!r}).",
                             param="temperature")
    n = body.get("n")
    if n is not None and (not _is_int(n) or not 1 <= n <= max_n):
        raise InvalidRequest(f"'n' must be an integer from 1 to {max_n} (got {n!r}).", param="n")
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
        raise InvalidRequest(f"{param} is required for role {message.get('role')!r}.", param=param)
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
        if "parameters" in function and function["parameters"] is not None \
                and not isinstance(function["parameters"], dict):
            raise InvalidRequest(f"{where}.function.parameters must be a JSON Schema object.",
                                 param=f"{where}.function.parameters")
        if "description" in function and function["description"] is not None \
                and not isinstance(function["description"], str):
            raise InvalidRequest(f"{where}.function.description must be a string.",
                                 param=f"{where}.function.description")


def strict(family: str, body: Any, *, max_tokens_cap: int, max_n: int) -> None:
    """The strict checks for one request body; a no-op for families they do not cover."""
    if not isinstance(body, dict) or family not in ("chat", "completions"):
        return
    _sampling(body, max_tokens_cap, max_n)
    if family == "chat":
        for i, message in enumerate(body.get("messages") or ()):
            if isinstance(message, dict):
                _content(message, i)
        _tools(body)

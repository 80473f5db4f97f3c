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

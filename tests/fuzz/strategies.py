"""Hypothesis strategies for the property fuzz tests: hostile JSON, bodies with one field replaced,
valid OpenAI requests with noise, header values, and the paths to put them at."""

from __future__ import annotations

import copy
import json
from typing import Any

from hypothesis import strategies as st

# -- scalars and JSON values ----------------------------------------------------------

SPECIAL_STRINGS = [
    "",
    " ",
    "\r\n",
    "a\r\nb",
    "\n",
    "\x00",
    "a\x00b",
    "\x1b[31m",
    "\x7f",
    "\x85",
    "\u2028",
    "\ufeff",
    "é",
    "模型",
    "💥",
    "\U0010ffff",
    "../",
    "..",
    "%00",
    "%2e%2e",
    "\\",
    "a/b",
    "provider/model",
    "echo",
    "m",
    "Bearer x",
    "<think>",
    "</think>",
    "<think>a</think>b",
    "[DONE]",
    "data: x\n\n",
    "null",
    "{}",
    "a" * 300,
]
SPECIAL_NUMBERS = [
    0,
    -1,
    1,
    2,
    3,
    128,
    129,
    4096,
    2**31 - 1,
    2**31,
    2**53 + 1,
    2**63 - 1,
    2**63,
    2**64 - 1,
    2**64,
    2**100,
    -(2**63) - 1,
    -(2**100),
    1.5,
    -0.0,
    0.1,
    2.0000001,
    1e308,
    -1e308,
    5e-324,
    1e-300,
]

texts = st.one_of(
    st.text(max_size=20),
    st.text(st.characters(codec="latin-1"), max_size=12),
    st.sampled_from(SPECIAL_STRINGS),
)
numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(SPECIAL_NUMBERS),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(texts, children, max_size=4)),
    max_leaves=10,
)


def nested(depth: int, kind: str, leaf: Any = 1) -> Any:
    value = leaf
    for _ in range(depth):
        value = [value] if kind == "list" else {"k": value}
    return value


# -- bodies with one field replaced ------------------------------------------------------

DELETE = object()
"""A replacement that removes the field."""

CHAT_BASE: dict[str, Any] = {
    "model": "m",
    "messages": [
        {"role": "system", "content": "be brief"},
        {
            "role": "user",
            "content": [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "data:,x"}}],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
        {"role": "user", "content": "and?"},
    ],
    "tools": [{"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object"}}}],
    "max_tokens": 16,
    "temperature": 0.5,
}
CHAT_PATHS: list[tuple[Any, ...]] = [
    ("model",),
    ("messages",),
    ("messages", 1),
    ("messages", 1, "role"),
    ("messages", 4, "role"),
    ("messages", 1, "content"),
    ("messages", 4, "content"),
    ("messages", 1, "content", 0),
    ("messages", 1, "content", 0, "type"),
    ("messages", 1, "content", 0, "text"),
    ("messages", 1, "content", 1, "image_url"),
    ("messages", 1, "content", 1, "text"),
    ("messages", 2, "content"),
    ("messages", 2, "tool_calls"),
    ("messages", 2, "tool_calls", 0),
    ("messages", 2, "tool_calls", 0, "function"),
    ("messages", 2, "tool_calls", 0, "function", "name"),
    ("messages", 2, "tool_calls", 0, "function", "arguments"),
    ("messages", 2, "tool_calls", 0, "id"),
    ("messages", 3, "tool_call_id"),
    ("messages", 1, "name"),
    ("stream",),
    ("stream_options",),
    ("stream_options", "include_usage"),
    ("n",),
    ("max_tokens",),
    ("max_completion_tokens",),
    ("temperature",),
    ("top_p",),
    ("stop",),
    ("tools",),
    ("tools", 0),
    ("tools", 0, "type"),
    ("tools", 0, "function"),
    ("tools", 0, "function", "name"),
    ("tools", 0, "function", "parameters"),
    ("tools", 0, "function", "description"),
    ("tool_choice",),
    ("response_format",),
    ("seed",),
    ("user",),
    ("logit_bias",),
    ("logprobs",),
    ("metadata",),
    ("reasoning_effort",),
    ("x-unknown",),
]
COMPLETIONS_BASE: dict[str, Any] = {"model": "m", "prompt": "hello", "max_tokens": 8}
COMPLETIONS_PATHS: list[tuple[Any, ...]] = [
    ("model",),
    ("prompt",),
    ("prompt", 0),
    ("prompt", 0, 0),
    ("stream",),
    ("stream_options",),
    ("stream_options", "include_usage"),
    ("n",),
    ("max_tokens",),
    ("temperature",),
    ("stop",),
    ("echo",),
    ("best_of",),
    ("suffix",),
    ("logprobs",),
    ("x-unknown",),
]
EMBEDDINGS_BASE: dict[str, Any] = {"model": "m", "input": ["a", "b"]}
EMBEDDINGS_PATHS: list[tuple[Any, ...]] = [
    ("model",),
    ("input",),
    ("input", 0),
    ("input", 0, 0),
    ("encoding_format",),
    ("dimensions",),
    ("user",),
    ("x-unknown",),
]
RERANK_BASE: dict[str, Any] = {"model": "m", "query": "q", "documents": ["a", "b"], "top_n": 1}
RERANK_PATHS: list[tuple[Any, ...]] = [
    ("model",),
    ("query",),
    ("documents",),
    ("documents", 0),
    ("top_n",),
    ("x-unknown",),
]
VIDEO_BASE: dict[str, Any] = {"model": "m", "prompt": "a cat"}
VIDEO_PATHS: list[tuple[Any, ...]] = [("model",), ("prompt",), ("request_id",), ("x-unknown",)]

FAMILIES: dict[str, tuple[str, dict[str, Any], list[tuple[Any, ...]]]] = {
    "chat": ("/v1/chat/completions", CHAT_BASE, CHAT_PATHS),
    "completions": ("/v1/completions", COMPLETIONS_BASE, COMPLETIONS_PATHS),
    "embeddings": ("/v1/embeddings", EMBEDDINGS_BASE, EMBEDDINGS_PATHS),
    "rerank": ("/v1/rerank", RERANK_BASE, RERANK_PATHS),
    "video": ("/v1/video/pipeline/generations", VIDEO_BASE, VIDEO_PATHS),
}


def set_path(body: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    """A copy of `body` with the field at `path` replaced (or removed: `DELETE`); missing or
    mistyped containers on the way are made to fit."""
    body = copy.deepcopy(body)
    cur: Any = body
    for key, nxt in zip(path, path[1:], strict=False):
        want_list = isinstance(nxt, int)
        child = cur[key] if _has(cur, key) else None
        if not (isinstance(child, list) if want_list else isinstance(child, dict)):
            child = [] if want_list else {}
            _put(cur, key, child)
        if want_list:
            while len(child) <= nxt:
                child.append({})
        cur = child
    last = path[-1]
    if value is DELETE:
        if isinstance(cur, dict):
            cur.pop(last, None)
        elif isinstance(cur, list) and last < len(cur):
            del cur[last]
    else:
        _put(cur, last, value)
    return body


def _has(container: Any, key: Any) -> bool:
    if isinstance(container, dict):
        return key in container
    return isinstance(container, list) and isinstance(key, int) and key < len(container)


def _put(container: Any, key: Any, value: Any) -> None:
    if isinstance(container, dict):
        container[key] = value
    else:
        while len(container) <= key:
            container.append({})
        container[key] = value


def encode(body: Any) -> bytes:
    """The standard library's JSON (it writes any integer, and escapes lone surrogates)."""
    return json.dumps(body).encode()


# -- valid requests (must be accepted) -----------------------------------------------------

_text_parts = st.builds(lambda t: {"type": "text", "text": t}, texts)
_image_parts = st.builds(lambda u: {"type": "image_url", "image_url": {"url": u}}, texts)
_contents = st.one_of(texts, st.lists(st.one_of(_text_parts, _image_parts), max_size=3))
_unknown_keys = st.text(min_size=1, max_size=12).filter(
    lambda k: (
        k
        not in {
            "model",
            "messages",
            "stream",
            "stream_options",
            "n",
            "max_tokens",
            "max_completion_tokens",
            "temperature",
            "stop",
            "tools",
            "prompt",
            "input",
            "encoding_format",
            "dimensions",
            "role",
            "content",
            "tool_calls",
            "text",
            "type",
            "image_url",
            "function",
            "name",
        }
    )
)
_noise = st.dictionaries(_unknown_keys, json_values, max_size=3)


@st.composite
def valid_messages(draw: st.DrawFn) -> dict[str, Any]:
    role = draw(st.sampled_from(["system", "developer", "user", "assistant", "tool", "function"]))
    message: dict[str, Any] = {"role": role, **draw(_noise)}
    if role in ("assistant", "function"):
        message["content"] = draw(st.one_of(st.none(), _contents))
        if role == "assistant" and draw(st.booleans()):
            message["tool_calls"] = [
                {"id": draw(texts), "type": "function", "function": {"name": draw(texts), "arguments": draw(texts)}}
            ]
    else:
        message["content"] = draw(_contents)
    return message


@st.composite
def valid_chat(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": draw(st.sampled_from(["m", "fake-model", "a.b-c:1", "a/org-model", "alias"])),
        "messages": draw(st.lists(valid_messages(), min_size=1, max_size=4)),
        **draw(_noise),
    }
    if draw(st.booleans()):
        body["stream"] = draw(st.booleans())
        body["stream_options"] = draw(
            st.one_of(st.none(), st.builds(lambda u: {"include_usage": u}, st.one_of(st.none(), st.booleans())))
        )
    for key, strategy in (
        ("max_tokens", st.integers(1, 1_048_576)),
        ("temperature", st.floats(0, 2)),
        ("n", st.integers(1, 128)),
        ("stop", st.one_of(texts, st.lists(texts, max_size=4))),
    ):
        if draw(st.booleans()):
            body[key] = draw(st.one_of(st.none(), strategy))
    return body


token_ids = st.integers(min_value=0, max_value=2**31 - 1)


@st.composite
def valid_completions(draw: st.DrawFn) -> dict[str, Any]:
    prompt = draw(
        st.one_of(
            st.none(),
            texts,
            st.lists(texts, max_size=3),
            st.lists(token_ids, max_size=5),
            st.lists(st.lists(token_ids, max_size=4), max_size=3),
        )
    )
    body = {"model": "m", "prompt": prompt, **draw(_noise)}
    if draw(st.booleans()):
        body["stream"] = draw(st.booleans())
    return body


@st.composite
def valid_embeddings(draw: st.DrawFn) -> dict[str, Any]:
    value = draw(
        st.one_of(
            texts,
            st.lists(texts, min_size=1, max_size=3),
            st.lists(token_ids, min_size=1, max_size=5),
            st.lists(st.lists(token_ids, max_size=4), min_size=1, max_size=3),
        )
    )
    body = {"model": "m", "input": value, **draw(_noise)}
    if draw(st.booleans()):
        body["encoding_format"] = draw(st.sampled_from([None, "float", "base64"]))
    if draw(st.booleans()):
        body["dimensions"] = draw(st.one_of(st.none(), st.integers(1, 2**31 - 1)))
    return body


# -- headers ---------------------------------------------------------------------------

READ_HEADERS = [
    "Authorization",
    "Content-Type",
    "X-Request-ID",
    "Accept-Encoding",
    "X-Api-Key",
    "Api-Key",
    "Accept",
    "Connection",
    "Content-Encoding",
    "Transfer-Encoding",
    "Keep-Alive",
    "TE",
    "Upgrade",
    "Proxy-Authorization",
    "Cookie",
    "User-Agent",
    "Origin",
    "X-Forwarded-For",
    "Expect",
    "Range",
    "If-None-Match",
]
"""Every request header the proxy reads (grep: request.headers, ex.headers, environ), and some it relays."""
# What a real server lets through to the app: Latin-1 without CR, LF or NUL.
header_values = st.one_of(
    st.text(st.characters(codec="latin-1", exclude_characters="\r\n\x00"), max_size=40),
    st.sampled_from(
        [
            "",
            " ",
            "Bearer",
            "Bearer ",
            "bearer  x",
            "Basic dXNlcjpwYXNz",
            "Bearer sk-cp-",
            "Bearer sk-cp-" + "a" * 40,
            "Bearer a.b.c",
            "Bearer ..",
            "Bearer eyJhbGciOiJub25lIn0.e30.",
            "Bearer " + "x" * 5000,
            "application/json",
            "application/json; charset=latin-1",
            "application/json; charset=utf-16",
            "application/x+json",
            "text/plain",
            "multipart/form-data",
            "multipart/form-data; boundary=",
            "multipart/form-data; boundary=zz",
            "application/x-www-form-urlencoded",
            "*/*",
            "gzip",
            "br, zstd",
            "identity;q=0",
            "gzip;q=0, *;q=0",
            "chunked",
            "close",
            "keep-alive, authorization",
            "x" * 300,
            "é",
            "\xff\xfe",
            "\t",
            "a\tb",
        ]
    ),
)
header_names = st.one_of(
    st.sampled_from(READ_HEADERS),
    st.from_regex(r"\A[A-Za-z][A-Za-z0-9-]{0,20}\Z"),
)

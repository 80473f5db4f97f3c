"""Echo mode: answers in OpenAI's shapes with no upstream, so a first run works offline.

Token counts are whitespace-separated words: "hello" gives 1 prompt,
2 completion ("Echo: hello"), 3 total.
"""

from __future__ import annotations

import base64
import hashlib
import math
import struct
import time
from collections.abc import Iterator
from typing import Any

import orjson
from flask import Response

from .exchange import Exchange
from .sse import Event

MODEL = "echo"
EMBEDDING_DIMENSIONS = 16
MAX_EMBEDDING_DIMENSIONS = 4096
"""A larger `dimensions` gets the default: echo vectors are for trying things out."""


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            p["text"]
            for p in content
            if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        )
    return ""


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _words(text: str) -> int:
    return len(text.split())


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def json_response(data: Any) -> Response:
    return Response(orjson.dumps(data), mimetype="application/json")


def _sse(events: Iterator[dict[str, Any]]) -> Response:
    def body() -> Iterator[bytes]:
        for event in events:
            yield Event.from_json(event).raw
        yield b"data: [DONE]\n\n"

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return Response(body(), mimetype="text/event-stream", headers=headers)


def chat(ex: Exchange) -> Response:
    messages = [m for m in ex.body.get("messages") or () if isinstance(m, dict)]
    last_user = next((m for m in reversed(messages) if m.get("role") == "user"), None)
    answer = "Echo: " + (_text(last_user.get("content")) if last_user else "")
    usage = ex.usage = _usage(sum(_words(_text(m.get("content"))) for m in messages), _words(answer))
    created = int(time.time())
    if not ex.streaming:
        return json_response(
            {
                "id": ex.request_id,
                "object": "chat.completion",
                "created": created,
                "model": MODEL,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
                "usage": usage,
            }
        )
    include_usage = _include_usage(ex.body)

    def chunks() -> Iterator[dict[str, Any]]:
        base = {"id": ex.request_id, "object": "chat.completion.chunk", "created": created, "model": MODEL}
        yield {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
        for i, word in enumerate(answer.split(" ")):
            piece = word if i == 0 else " " + word
            yield {**base, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
        yield {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        if include_usage:
            yield {**base, "choices": [], "usage": usage}

    return _sse(chunks())


def completions(ex: Exchange) -> Response:
    prompt = ex.body.get("prompt")
    if isinstance(prompt, str):
        text_in = prompt
    else:
        text_in = " ".join(p for p in prompt if isinstance(p, str)) if isinstance(prompt, list) else ""
    answer = "Echo: " + text_in
    usage = ex.usage = _usage(_words(text_in), _words(answer))
    base = {"id": ex.request_id, "object": "text_completion", "created": int(time.time()), "model": MODEL}
    if not ex.streaming:
        choice = {"index": 0, "text": answer, "logprobs": None, "finish_reason": "stop"}
        return json_response({**base, "choices": [choice], "usage": usage})

    def chunks() -> Iterator[dict[str, Any]]:
        yield {**base, "choices": [{"index": 0, "text": answer, "logprobs": None, "finish_reason": None}]}
        yield {**base, "choices": [{"index": 0, "text": "", "logprobs": None, "finish_reason": "stop"}]}
        if _include_usage(ex.body):
            yield {**base, "choices": [], "usage": usage}

    return _sse(chunks())


def unit_vector(text: str, dimensions: int) -> list[float]:
    """Deterministic: the same text always gives the same unit vector."""
    seed = hashlib.sha256(text.encode()).digest()
    values: list[float] = []
    counter = 0
    while len(values) < dimensions:
        block = hashlib.sha256(seed + counter.to_bytes(4, "little")).digest()
        values.extend((b - 127.5) / 127.5 for b in block)
        counter += 1
    values = values[:dimensions]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


def embeddings(ex: Exchange) -> Response:
    raw = ex.body.get("input")
    if not isinstance(raw, list):
        inputs: list[Any] = [raw if isinstance(raw, str) else ""]
    else:
        inputs = [raw] if raw and not isinstance(raw[0], (str, list)) else raw  # one list of token ids
    dims = ex.body.get("dimensions")
    if isinstance(dims, bool) or not isinstance(dims, int) or not 0 < dims <= MAX_EMBEDDING_DIMENSIONS:
        dims = EMBEDDING_DIMENSIONS
    as_base64 = ex.body.get("encoding_format") == "base64"
    data = []
    for i, item in enumerate(inputs):
        vector = unit_vector(item if isinstance(item, str) else orjson.dumps(item).decode(), dims)
        embedding: Any = vector
        if as_base64:
            embedding = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
        data.append({"object": "embedding", "index": i, "embedding": embedding})
    words = sum(_words(x) if isinstance(x, str) else len(x) if isinstance(x, list) else 1 for x in inputs)
    usage = ex.usage = {"prompt_tokens": words, "total_tokens": words}
    return json_response({"object": "list", "data": data, "model": MODEL, "usage": usage})


def models(ex: Exchange) -> Response:
    entry = {"id": MODEL, "object": "model", "created": 0, "owned_by": "cot-proxy"}
    if ex.path.rstrip("/") == "models":
        return json_response({"object": "list", "data": [entry]})
    if ex.path == f"models/{MODEL}":
        return json_response(entry)
    from .errors import NotFound

    raise NotFound(f"The model '{ex.path.removeprefix('models/')}' does not exist.", code="model_not_found")

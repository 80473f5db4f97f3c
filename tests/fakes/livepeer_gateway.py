"""A fake Livepeer BYOC gateway: checks the `Livepeer` header as the real one does,
answers each capability route, and adds the noise a real gateway adds (balance
headers, `text/plain` streams, interleaved `{"balance": ...}` events)."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from tests.fakes.openai_upstream import FakeUpstream, Recorded, Reply, chat_chunk, chat_completion, json_reply

NOISE = {
    "Livepeer-Balance": "1000",
    "X-Metadata": "eyJzZWNyZXQiOjF9",
    "X-Orchestrator-Url": "https://orch.example:8935",
}
PREFIX = "/process/request"


def decode_header(value: str | None) -> dict[str, Any]:
    """The decoded `Livepeer` header, or ValueError as the gateway would refuse it."""
    if not value:
        raise ValueError("missing Livepeer header")
    try:
        outer = json.loads(base64.b64decode(value, validate=True))
        request = json.loads(outer["request"])
        parameters = json.loads(outer["parameters"])
    except (binascii.Error, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"malformed Livepeer header: {exc}") from None
    if set(outer) != {"request", "parameters", "capability", "timeout_seconds"}:
        raise ValueError("unexpected Livepeer header keys")
    if request != {"run": outer["capability"]} or not isinstance(outer["timeout_seconds"], int):
        raise ValueError("Livepeer header request/timeout mismatch")
    if set(parameters.get("orchestrators", {})) != {"include", "exclude"}:
        raise ValueError("Livepeer header parameters malformed")
    return outer


def _noisy(reply: Reply) -> Reply:
    reply.headers.update(NOISE)
    return reply


def _balance(n: int) -> bytes:
    return b'data: {"balance": %d}\n\n' % n


def respond(rec: Recorded) -> Reply:
    try:
        decode_header(rec.headers.get("livepeer"))
    except ValueError as exc:
        return Reply(status=400, headers={"Content-Type": "text/plain"}, parts=[str(exc).encode()], chunked=False)
    if not rec.path.startswith(PREFIX + "/v1/"):
        return Reply(status=404, headers={"Content-Type": "text/plain"}, parts=[b"404 page not found"], chunked=False)
    path = rec.path[len(PREFIX) :]
    body = rec.json() if rec.body else {}
    if path == "/v1/chat/completions":
        if body.get("stream"):
            events = [
                json.dumps(chat_chunk(role="assistant", content="")).encode(),
                json.dumps(chat_chunk("Hello")).encode(),
                None,
                json.dumps(chat_chunk(" Livepeer")).encode(),
                json.dumps(chat_chunk(finish="stop")).encode(),
                None,
            ]
            raw = [b"data: " + e + b"\n\n" if e else _balance(990 - i) for i, e in enumerate(events)]
            raw.append(b"event: ping\n\n")
            raw.append(b"data: [DONE]\n\n")
            return _noisy(Reply(headers={"Content-Type": "text/plain; charset=utf-8"}, parts=raw))
        return _noisy(
            json_reply(
                chat_completion("Hello Livepeer", body.get("model", "m")), headers={"Content-Type": "text/plain"}
            )
        )
    if path == "/v1/embeddings":
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = [{"object": "embedding", "index": i, "embedding": [0.6, 0.8]} for i in range(len(inputs))]
        return _noisy(
            json_reply({"object": "list", "data": data, "model": "e", "usage": {"prompt_tokens": 1, "total_tokens": 1}})
        )
    if path == "/v1/images/generations":
        return _noisy(json_reply({"created": 1700000000, "data": [{"b64_json": base64.b64encode(b"PNG").decode()}]}))
    if path == "/v1/rerank":
        docs = body.get("documents", [])
        results = [{"index": i, "relevance_score": 1.0 / (i + 1)} for i in range(len(docs))]
        return _noisy(json_reply({"id": "rr-1", "results": results}))
    if path in ("/v1/video/pipeline/generations", "/v1/video/generations"):
        return _noisy(json_reply({"id": "job-123", "status": "queued"}))
    if path.endswith("/status"):
        return _noisy(json_reply({"id": body.get("id"), "status": "completed", "url": "https://cdn.example/v.mp4"}))
    return Reply(status=404, headers={"Content-Type": "text/plain"}, parts=[b"no such capability route"], chunked=False)


def start() -> FakeUpstream:
    gateway = FakeUpstream().start()
    gateway.responder = respond
    return gateway

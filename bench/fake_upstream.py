"""A fast fake OpenAI upstream for benchmarks (aiohttp, one process).

    python bench/fake_upstream.py --port 18000

Routes:
  POST /v1/chat/completions  ~1 KB `chat.completion` JSON, or with `"stream": true`
                             SSE `chat.completion.chunk` events then `data: [DONE]`.
                             Body extras: `bench_chunks` (default 20), `bench_interval_ms`
                             (default 0, pause between chunks), `bench_think` (true: the
                             first ~70% of chunks are `<think>...</think>`, open tag split
                             as `<th` + `ink>`).
  GET  /v1/models            a small model list.
  GET  /bench/stats          what this process answered so far: `chat` requests, and
                             `models_background` / `models_other` list requests (by whether
                             the User-Agent is the proxy's `cot-proxy-background`).

Each chunk carries a top-level `bench_seq` (its index) so the client can tell
which chunks a proxy dropped or merged. Every answer is prebuilt bytes; the
request body is parsed only for streamed requests.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import time
from collections import Counter

import orjson
from aiohttp import web

MODEL = "bench-model"
MAX_CHUNKS = 100_000
MAX_INTERVAL_MS = 10_000.0
CREATED = int(time.time())
ANSWER_WORDS = [
    "The",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "the",
    "lazy",
    "dog",
    "and",
    "keeps",
    "running",
    "far",
    "away",
]


def _completion_bytes() -> bytes:
    """A ~1 KB non-streamed chat completion."""
    text = " ".join(ANSWER_WORDS[i % len(ANSWER_WORDS)] for i in range(120))
    body = {
        "id": "chatcmpl-bench0000000000000000000000",
        "object": "chat.completion",
        "created": CREATED,
        "model": MODEL,
        "system_fingerprint": "fp_bench",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 180, "completion_tokens": 120, "total_tokens": 300},
    }
    return orjson.dumps(body)


COMPLETION = _completion_bytes()
MODELS = orjson.dumps(
    {
        "object": "list",
        "data": [
            {"id": MODEL, "object": "model", "created": CREATED, "owned_by": "bench"},
            {"id": "bench-reasoner", "object": "model", "created": CREATED, "owned_by": "bench"},
        ],
    }
)
DONE = b"data: [DONE]\n\n"
BACKGROUND_AGENT = "cot-proxy-background"
"""The User-Agent of the proxy's own model-list fetches and health probes."""
STATS: Counter[str] = Counter()


def _contents(n: int, think: bool) -> list[str]:
    """The `delta.content` of each of `n` chunks."""
    if not think:
        return [ANSWER_WORDS[i % len(ANSWER_WORDS)] + " " for i in range(n)]
    k = max(2, round(n * 0.7))  # chunks inside <think>...</think>
    out = ["<th", "ink>Let me think. "] + [f"step {i} of the reasoning. " for i in range(2, k)]
    out[k - 1] += "Done.</think>"
    out += ["\n\n" if i == k else ANSWER_WORDS[i % len(ANSWER_WORDS)] + " " for i in range(k, n)]
    return out[:n]


@functools.lru_cache(maxsize=64)
def stream_events(n: int, think: bool) -> tuple[bytes, ...]:
    """Prebuilt SSE events for one stream: `n` chunks, then `[DONE]`."""
    events = []
    for seq, content in enumerate(_contents(n, think)):
        delta: dict[str, str] = {"role": "assistant", "content": content} if seq == 0 else {"content": content}
        chunk = {
            "id": "chatcmpl-bench0000000000000000000000",
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": MODEL,
            "system_fingerprint": "fp_bench",
            "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": "stop" if seq == n - 1 else None}
            ],
            "bench_seq": seq,
        }
        events.append(b"data: " + orjson.dumps(chunk) + b"\n\n")
    events.append(DONE)
    return tuple(events)


def _int_field(body: dict[str, object], name: str, default: int, upper: int) -> int:
    value = body.get(name, default)
    return max(1, min(upper, value)) if isinstance(value, int) else default


def _float_field(body: dict[str, object], name: str, default: float, upper: float) -> float:
    value = body.get(name, default)
    return max(0.0, min(upper, float(value))) if isinstance(value, (int, float)) else default


async def chat(request: web.Request) -> web.StreamResponse:
    """Chat completions: prebuilt JSON, or a paced SSE stream."""
    STATS["chat"] += 1
    raw = await request.read()
    if b'"stream"' not in raw:
        return web.Response(body=COMPLETION, content_type="application/json")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return web.json_response({"error": {"message": "bad JSON", "type": "invalid_request_error"}}, status=400)
    if not isinstance(body, dict) or body.get("stream") is not True:
        return web.Response(body=COMPLETION, content_type="application/json")
    events = stream_events(_int_field(body, "bench_chunks", 20, MAX_CHUNKS), body.get("bench_think") is True)
    interval = _float_field(body, "bench_interval_ms", 0.0, MAX_INTERVAL_MS) / 1000.0
    resp = web.StreamResponse(headers={"content-type": "text/event-stream", "cache-control": "no-cache"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    last = len(events) - 2  # no pause between the final chunk and [DONE]
    for i, event in enumerate(events):
        await resp.write(event)
        if interval and i < last:
            await asyncio.sleep(interval)
    await resp.write_eof()
    return resp


async def models(request: web.Request) -> web.Response:
    background = request.headers.get("User-Agent", "").startswith(BACKGROUND_AGENT)
    STATS["models_background" if background else "models_other"] += 1
    return web.Response(body=MODELS, content_type="application/json")


async def stats(_: web.Request) -> web.Response:
    return web.json_response(dict(STATS))


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/bench/stats", stats)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(make_app(), host=args.host, port=args.port, backlog=4096, access_log=None, print=None)


if __name__ == "__main__":
    main()

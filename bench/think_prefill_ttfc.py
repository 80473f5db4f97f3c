"""What the think_prefilled=auto hold costs: time to the first visible token, with and without it.

    python bench/think_prefill_ttfc.py [--n 10] [--intervals 10,20,50] [--env KEY=VAL ...]

Starts its own fake upstream (this file with `--serve PORT`: aiohttp, streams of `--chunk-chars`
characters per chunk, `bench_interval_ms` apart) and the proxy under real Gunicorn (one worker,
default settings unless `--env`), both on free 127.0.0.1 ports, via bench/common.py's helpers.

TTFC here = from sending the request to the first SSE event whose `delta.content` has text (what a
user sees), median and p90 over `--n` sequential streams per case and token interval:

| case | what it shows |
|---|---|
| direct | the fake upstream alone |
| known | proxy, a model it learned does not pre-fill: no hold (the cost once a model is known) |
| unknown, held | proxy, a new model name matching THINK_PREFILL_HOLD_MODELS each time: the hold |
| unknown, other name | proxy, a new name not matching: no hold |

Then, for a model that pre-fills (`R</think>\\n\\nanswer`), whether its first stream leaked, by the
length of R and the token interval: the hold catches R if its end tag comes within the hold's bounds.
Each stream is read only up to its first visible text, so the run stays short (about a minute).
Writes bench/results/think_prefill_ttfc.json.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
MAX_CHUNKS = 5000
ANSWER = "The answer is four, as anyone can check by counting on their fingers once more. " * 40
"""About 3,300 characters: longer than any hold, so a plain stream is still going when the hold ends."""


# -- the fake upstream (--serve) -------------------------------------------------------------------------


def pieces(body: dict[str, Any]) -> list[str]:
    size = max(1, min(64, int(body.get("bench_chunk_chars", 4))))
    reasoning = int(body.get("bench_reasoning_chars", -1))
    out = [ANSWER[i : i + size] for i in range(0, len(ANSWER), size)]
    if reasoning >= 0:
        text = ("thinking " * (reasoning // 9 + 1))[:reasoning] or "\n"
        out = [text[i : i + size] for i in range(0, len(text), size)] + ["</think>", "\n\n"] + out
    return out[:MAX_CHUNKS]


def serve(port: int) -> None:
    import asyncio

    from aiohttp import web

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        data = {
            "id": "chatcmpl-b",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "bench",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return b"data: " + json.dumps(data).encode() + b"\n\n"

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        interval = max(0.0, min(1.0, float(body.get("bench_interval_ms", 20)) / 1000))
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(chunk({"role": "assistant", "content": ""}))
        try:
            for piece in pieces(body):
                await asyncio.sleep(interval)
                await resp.write(chunk({"content": piece}))
            await resp.write(chunk({}, "stop") + b"data: [DONE]\n\n")
            await resp.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            pass  # the client read what it needed and left
        return resp

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "bench", "object": "model"}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


# -- the client ------------------------------------------------------------------------------------------


def first_visible(port: int, model: str, timeout: float = 30.0, **bench: Any) -> tuple[float, str]:
    """(seconds to the first event with visible text, that text); reads no further, or the whole
    stream with `bench['whole']` (then the text is everything visible)."""
    whole = bench.pop("whole", False)
    body = json.dumps(
        {"model": model, "stream": True, "messages": [{"role": "user", "content": "2+2?"}], **bench}
    ).encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    started = time.perf_counter()
    try:
        conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        buf, seen, first_at = b"", "", None
        deadline = started + timeout
        while time.perf_counter() < deadline:
            data = resp.read1(65536)
            if not data:
                break
            buf += data
            while b"\n\n" in buf:
                event, buf = buf.split(b"\n\n", 1)
                if not event.startswith(b"data: {"):
                    continue
                for choice in json.loads(event[6:]).get("choices", []):
                    text = (choice.get("delta") or {}).get("content") or ""
                    if text:
                        first_at = first_at or time.perf_counter()
                        seen += text
                if seen and not whole:
                    return first_at - started, seen
        if first_at is None:
            raise RuntimeError(f"no visible text from port {port} for {model}")
        return first_at - started, seen
    finally:
        conn.close()


def stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p90_ms": round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))] * 1000, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=10, help="streams per case and interval (default 10)")
    parser.add_argument("--intervals", default="10,20,50", help="ms between upstream chunks (default 10,20,50)")
    parser.add_argument("--chunk-chars", type=int, default=4, help="characters per chunk, about a token (4)")
    parser.add_argument("--reasoning", default="0,32,64,128,256,512,1024", help="R lengths for the leak table")
    parser.add_argument("--env", action="append", default=[], help="KEY=VAL for the proxy")
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    sys.path.insert(0, str(HERE))
    import common as bench  # bench/common.py: processes, ports, Gunicorn (bench/harness.py)

    n = max(1, min(args.n, 200))
    intervals = [max(0.0, min(1000.0, float(x))) for x in args.intervals.split(",")]
    lengths = [max(0, min(100_000, int(x))) for x in args.reasoning.split(",")]
    extra = dict(pair.split("=", 1) for pair in args.env)
    bench.RESULTS.mkdir(parents=True, exist_ok=True)
    up_port = bench.free_port()
    upstream = bench.Proc(
        "prefill-upstream",
        [sys.executable, str(Path(__file__).resolve()), "--serve", str(up_port)],
        dict(bench.os.environ),
        up_port,
    )
    proxy = None
    try:
        upstream.wait_ready("/v1/models", 20)
        env = bench.proxy_env(upstream, {"LOG_LEVEL": "warning", **extra})
        proxy = bench.start_proxy("prefill-proxy", env, 1)
        common = {"bench_chunk_chars": args.chunk_chars}
        # Warm both up; teach the proxy that `bench-r1-known` does not pre-fill (a whole plain answer).
        for port in (up_port, proxy.port):
            first_visible(port, "warm", bench_interval_ms=0, **common)
        first_visible(proxy.port, "bench-r1-known", bench_interval_ms=0, whole=True, **common)
        ttfc: dict[str, Any] = {}
        for interval in intervals:
            cases: dict[str, list[float]] = {"direct": [], "known": [], "unknown_held": [], "unknown_other": []}
            for _ in range(n):  # interleaved, so drift hits every case alike
                tag = uuid.uuid4().hex[:8]
                for case, port, model in (
                    ("direct", up_port, "x"),
                    ("known", proxy.port, "bench-r1-known"),
                    ("unknown_held", proxy.port, f"bench-r1-{tag}"),
                    ("unknown_other", proxy.port, f"bench-{tag}"),
                ):
                    took, _ = first_visible(port, model, bench_interval_ms=interval, **common)
                    cases[case].append(took)
            ttfc[f"{interval:g}ms"] = {case: stats(v) for case, v in cases.items()}
        leaks: dict[str, Any] = {}
        for interval in intervals:
            row = {}
            for length in lengths:
                _, text = first_visible(
                    proxy.port,
                    f"bench-r1-pre-{uuid.uuid4().hex[:8]}",
                    bench_interval_ms=interval,
                    bench_reasoning_chars=length,
                    **common,
                )
                row[str(length)] = "leaked" if "thinking" in text else "caught"
            leaks[f"{interval:g}ms"] = row
        meta = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
        try:
            meta.request("GET", "/v1/metadata")
            think = json.loads(meta.getresponse().read()).get("reasoning", {}).get("think_prefill", {})
        finally:
            meta.close()
        result = {
            "n": n,
            "chunk_chars": args.chunk_chars,
            "env": extra,
            "hold": {k: think.get(k) for k in ("hold_chars", "hold_ms", "hold_models")},
            "ttfc": ttfc,
            "first_stream_of_a_prefilling_model": leaks,
        }
    finally:
        if proxy is not None:
            proxy.stop()
        upstream.stop()
    out = bench.RESULTS / "think_prefill_ttfc.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"hold: {result['hold']}")
    print(f"{'interval':>9} {'direct':>14} {'known':>14} {'unknown,held':>14} {'unknown,other':>14}   (p50/p90 ms)")
    for interval, cases in ttfc.items():
        cells = [f"{c['p50_ms']:.0f}/{c['p90_ms']:.0f}" for c in cases.values()]
        print(f"{interval:>9} " + " ".join(f"{c:>14}" for c in cells))
    print("first stream of a pre-filling model, by reasoning length (chars):")
    for interval, row in leaks.items():
        print(f"{interval:>9} " + "  ".join(f"{k}:{v}" for k, v in row.items()))
    print(f"written to {out}")


if __name__ == "__main__":
    main()

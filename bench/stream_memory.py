"""What a stream costs in memory, and whether it grows with the stream's length: cot-proxy and the naive relay.

    python bench/stream_memory.py               # about 1.5 min
    python bench/stream_memory.py --long 400    # longer long streams (400 chunks, 20 s each)

Part 1, as deployed (Gunicorn gevent, 2 workers, master + workers' RSS sampled every 100 ms): idle after a
warm-up, then the peak with 250 and with 1,000 concurrent streams of 20 chunks 50 ms apart, then 1,000
streams of `--long` chunks. Per stream = (peak at 1,000 - peak at 250) / 750; growth with length = peak
with long streams - peak with 20-chunk ones (0 when nothing is kept per chunk).

Part 2, a census inside one Gunicorn worker (bench/census_app.py wraps each relay): when 1,000 streams are all
past their first chunk, the worker counts its greenlets, the C stack each has saved on the heap (greenlet's
`_stack_saved`: a paused greenlet's stack lives there), and what was allocated since before the streams
(tracemalloc, by file; it sees the saved stacks too, under the socket call a greenlet paused in). Its RSS
figure includes tracemalloc's own records, so read it against part 1's.
JSON: bench/results/stream_memory_latest.json.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    BENCH,
    HOST,
    REPO,
    BenchError,
    Proc,
    RssSampler,
    app_label,
    compiled,
    fmt,
    free_port,
    loadavg,
    on_sigterm_exit,
    print_table,
    proxy_env,
    raise_nofile,
    start_naive,
    start_proxy,
    start_upstream,
    started,
    tree_rss_mb,
    write_json,
)
from streams import run_streams  # noqa: E402

INTERVAL_MS = 50.0
SHORT = 20
CENSUS_STREAMS = 1000
CENSUS_CHUNKS = 200  # 10 s per stream: all of them open at once (tracemalloc slows the server), each paused


# -- part 1: Gunicorn -------------------------------------------------------------------------------------


def peak_mb(server: Any, n: int, chunks: int) -> tuple[float, int]:
    """Peak RSS (MiB) of `server`'s master + workers while `n` streams of `chunks` run; and how many ended."""
    with RssSampler(server.proc.pid) as sampler:
        run = asyncio.run(run_streams(server.port, n, chunks, INTERVAL_MS, expect_all=True))
    return round(sampler.peak, 1), run.completed


def deployed(server: Any, long: int) -> dict[str, Any]:
    asyncio.run(run_streams(server.port, 50, 5, 0.0, expect_all=False))  # warm: pools, code paths
    time.sleep(1.0)  # the warm-up's connections closed before idle is read
    out: dict[str, Any] = {"idle_mb": round(tree_rss_mb(server.proc.pid), 1)}
    out["peak_250_mb"], done_250 = peak_mb(server, 250, SHORT)
    out["peak_1000_mb"], done_1000 = peak_mb(server, 1000, SHORT)
    out["peak_1000_long_mb"], done_long = peak_mb(server, 1000, long)
    out["completed"] = f"{done_250}/250, {done_1000}/1000, {done_long}/1000"
    out["per_stream_kib"] = round((out["peak_1000_mb"] - out["peak_250_mb"]) / 750 * 1024, 1)
    out["growth_with_length_mb"] = round(out["peak_1000_long_mb"] - out["peak_1000_mb"], 1)
    return out


# -- part 2: the census -----------------------------------------------------------------------------------


def census(which: str, upstream: Proc) -> dict[str, Any]:
    """bench/census_app.py in one Gunicorn gevent worker (cot-proxy with its gunicorn.conf.py, the naive relay
    with stock Gunicorn): warm, baseline, CENSUS_STREAMS streams; the census is taken when all are open."""
    port = free_port()
    target = f"http://{HOST}:{upstream.port}/v1"
    env = {**os.environ, "CENSUS_APP": which, "CENSUS_STREAMS": str(CENSUS_STREAMS)}
    if which == "naive":
        conf = ["-c", os.devnull, "-k", "gevent", "-w", "1", "-b", f"{HOST}:{port}", "--worker-connections", "10000"]
        env["NAIVE_UPSTREAM"] = target
    else:
        conf = ["-c", str(REPO / "gunicorn.conf.py")]
        env.update(proxy_env(upstream, {"WEB_CONCURRENCY": "1", "HOST": HOST, "PORT": str(port)}))
    argv = [sys.executable, "-m", "gunicorn", *conf, "--chdir", str(BENCH), "census_app:app"]
    server = started(Proc(f"census-{which}", argv, env, port), "/v1/models", 60, 1)
    try:
        asyncio.run(run_streams(port, 50, 5, 0.0, expect_all=False))
        if _get(port, "/__census/base")[0] != 200:
            raise BenchError(f"census ({which}): no baseline")
        run = asyncio.run(run_streams(port, CENSUS_STREAMS, CENSUS_CHUNKS, INTERVAL_MS, expect_all=True))
        status, body = _get(port, "/__census/result")
        if status != 200:
            raise BenchError(f"census ({which}): not taken ({run.completed}/{CENSUS_STREAMS} streams ended)")
        out: dict[str, Any] = json.loads(body)
        out["completed"] = run.completed
        return out
    finally:
        server.stop()


def _get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=60)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


# -- report -----------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--long", type=int, default=200, help="chunks per long stream (default 200: 10 s each)")
    args = parser.parse_args()
    if not 40 <= args.long <= 2000:
        parser.error("--long 40..2000")
    on_sigterm_exit()
    raise_nofile()
    started, load0 = time.monotonic(), loadavg()
    compiled(REPO)
    label = f"cot-proxy {app_label()}"
    print(f"load {load0}; part 1 (Gunicorn, 2 workers): naive, cot-proxy; part 2: census in one worker", flush=True)
    report: dict[str, Any] = {"deployed": {}, "census": {}}
    upstream: Proc | None = None
    try:
        upstream = start_upstream("memory-upstream")
        for name in ("naive relay", label):
            server = start_naive(upstream) if name == "naive relay" else start_proxy("memory", proxy_env(upstream, {}))
            try:
                print(f"  {name}: idle, 250 and 1,000 streams of {SHORT} chunks, 1,000 of {args.long} ...", flush=True)
                report["deployed"][name] = deployed(server, args.long)
            finally:
                server.stop()
        for name, which in (("naive relay", "naive"), (label, "cot")):
            print(f"  census: {name}, {CENSUS_STREAMS} streams open ...", flush=True)
            report["census"][name] = census(which, upstream)
    finally:
        if upstream is not None:
            upstream.stop()
    rows: list[tuple[str, ...]] = [
        ("as deployed (MiB)", "idle", "peak 250", "peak 1,000", f"peak 1,000 x {args.long}", "per stream", "growth")
    ]
    for name, d in report["deployed"].items():
        rows.append(
            (
                name,
                fmt(d["idle_mb"]),
                fmt(d["peak_250_mb"]),
                fmt(d["peak_1000_mb"]),
                fmt(d["peak_1000_long_mb"]),
                f"{d['per_stream_kib']} KiB",
                f"{d['growth_with_length_mb']:+} MiB",
            )
        )
    print()
    print_table(rows)
    ended = ", ".join(f"{k} {d['completed']}" for k, d in report["deployed"].items())
    print(f"completed: {ended}")
    rows = [("census, 1,000 streams open (KiB/stream)", "greenlets", "stack saved", "traced", "RSS")]
    for name, c in report["census"].items():
        n = max(c["streams_open"], 1)
        rows.append(
            (
                name,
                fmt(c["greenlets"]),
                f"{c['stack_saved_kib'] / n:.1f}",
                f"{c['python_kib'] / n:.1f}",
                f"{c['rss_kib'] / n:.1f}",
            )
        )
    print()
    print_table(rows)
    for name, c in report["census"].items():
        n = max(c["streams_open"], 1)
        print(f"{name}, traced allocations per open stream by file:")
        for f, kib in c["top_files_kib"]:
            print(f"  {kib / n * 1024:7.0f} B  {f}")
    report.update(load=[load0, loadavg()], took_s=round(time.monotonic() - started))
    print(f"took {report['took_s']} s; load {load0} at start, {loadavg()} at end")
    print(f"wrote {write_json('stream_memory_latest.json', report)}")


if __name__ == "__main__":
    main()

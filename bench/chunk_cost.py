"""CPU per relayed SSE chunk in the proxy's own code, in-process: the real Pipeline over recorded streams.

    python bench/chunk_cost.py              # every scenario, ~20 s
    python bench/chunk_cost.py --streams 500 --profile plain-strip
    git worktree add /tmp/cot-before HEAD~1 && python bench/chunk_cost.py --root /tmp/cot-before   # before

Builds the pipeline exactly as the app does (`build_pipeline(Config.from_env(...))`, default configuration
plus the scenario's variables), binds it to a hand-made streamed chat `Exchange`, and runs what the relay
runs per upstream chunk (app/relay.py `_sse`): `SSEDecoder.feed`, `BoundPipeline.stream_event` (or
`stream_end` at `[DONE]`), and joining the events' bytes. The streams are the fake upstream's own
(bench/fake_upstream.py `stream_events`), one event per TCP chunk as it writes them. No network, no
Gunicorn: this is the per-chunk cost of the steps, the floor is `decoder only` (no steps at all).

Scenarios (each: THINK_MODE=keep = think step off, strip = on):
  plain        20 short answer chunks (the benchmark stream)
  think        the same with the first 70 % of chunks inside `<think>...</think>` (tag split `<th` + `ink>`)
  renamed      plain, but the client named an alias (`ModelName` rewrites every chunk's `model`)
Prints CPU microseconds per chunk (best of --repeat runs: the least disturbed by other work on the box; the
per-stream set-up, timed on a stream of only `[DONE]`, taken out and shown apart) and, with --profile NAME,
the top functions of that scenario by own time (cProfile).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time
from collections.abc import Callable
from pathlib import Path

BENCH = Path(__file__).resolve().parent
# --root DIR: import `app` from another checkout (a `git worktree` of an older commit: before/after).
ROOT = Path(sys.argv[sys.argv.index("--root") + 1]) if "--root" in sys.argv[:-1] else BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

from fake_upstream import stream_events  # noqa: E402

from app.config import Config  # noqa: E402
from app.exchange import Exchange  # noqa: E402
from app.sse import SSEDecoder  # noqa: E402
from app.transforms import Pipeline, build_pipeline  # noqa: E402

CHUNKS = 20
UPSTREAM_MODEL = "bench-model"
ENV = {"TARGET_BASE_URL": "http://127.0.0.1:9/v1/", "LOG_LEVEL": "WARNING"}
SSE_HEADERS = {"content-type": "text/event-stream"}


def pipeline(think_mode: str) -> Pipeline:
    return build_pipeline(Config.from_env({**ENV, "THINK_MODE": think_mode}))


def exchange(client_model: str) -> Exchange:
    body = {"model": UPSTREAM_MODEL, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    return Exchange(
        request_id="bench", family="chat", method="POST", path="chat/completions", body=body, client_model=client_model
    )


def relay_stream(pipe: Pipeline | None, client_model: str, chunks: tuple[bytes, ...]) -> int:
    """One stream through the relay's per-chunk loop; returns the bytes sent (so nothing is optimised away)."""
    decoder = SSEDecoder(1 << 20)
    sent = 0
    if pipe is None:
        for chunk in chunks:
            sent += len(b"".join(e.raw for e in decoder.feed(chunk)))
        return sent
    ex = exchange(client_model)
    bound = pipe.bind(ex)
    bound.request()
    if client_model != UPSTREAM_MODEL:
        ex.body["model"] = UPSTREAM_MODEL  # as routing leaves it: the alias's upstream name
    bound.response_headers(200, dict(SSE_HEADERS))
    ended = False
    for chunk in chunks:
        out = []
        for event in decoder.feed(chunk):
            if event.is_done and not ended:
                ended = True
                out.extend(bound.stream_end())
                out.append(event)
            else:
                out.extend(bound.stream_event(event))
        sent += len(b"".join(e.raw for e in out))
    return sent


def scenarios() -> dict[str, Callable[[tuple[bytes, ...]], int]]:
    """name -> a function relaying one recorded stream (given its chunks)."""
    pipes = {mode: pipeline(mode) for mode in ("keep", "strip")}
    out: dict[str, Callable[[tuple[bytes, ...]], int]] = {
        "decoder-only": lambda chunks: relay_stream(None, UPSTREAM_MODEL, chunks)
    }
    for mode, pipe in pipes.items():
        out[f"plain-{mode}"] = lambda chunks, p=pipe: relay_stream(p, UPSTREAM_MODEL, chunks)
        out[f"think-{mode}"] = lambda chunks, p=pipe: relay_stream(p, UPSTREAM_MODEL, chunks)
        out[f"renamed-{mode}"] = lambda chunks, p=pipe: relay_stream(p, "bench-alias", chunks)
    return out


def stream_of(name: str) -> tuple[bytes, ...]:
    return stream_events(CHUNKS, name.startswith("think"))


def timings(
    runs: dict[str, Callable[[tuple[bytes, ...]], int]], streams: int, repeat: int
) -> dict[str, tuple[float, float]]:
    """name -> (CPU us per chunk, CPU us of set-up per stream), each from the best of `repeat` timings of
    `streams` streams. Set-up (binding the pipeline, the request and header hooks, `[DONE]`) is timed on a
    stream of only `[DONE]` and taken out of the per-chunk figure. Round-robin over the scenarios, so a
    burst of other work on the box hits them all alike."""
    done = (stream_events(CHUNKS, False)[-1],)
    best = {(name, kind): float("inf") for name in runs for kind in ("full", "setup")}
    for _ in range(repeat):
        for name, run in runs.items():
            for kind, chunks in (("full", stream_of(name)), ("setup", done)):
                start = time.process_time()
                for _ in range(streams):
                    run(chunks)
                best[name, kind] = min(best[name, kind], time.process_time() - start)
    return {
        name: (
            (best[name, "full"] - best[name, "setup"]) / (streams * CHUNKS) * 1e6,
            best[name, "setup"] / streams * 1e6,
        )
        for name in runs
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=1000, help="streams per timing (default 1000)")
    parser.add_argument("--repeat", type=int, default=5, help="timings per scenario; the best counts (default 5)")
    parser.add_argument("--profile", metavar="SCENARIO", help="print the top functions of one scenario")
    parser.add_argument("--only", nargs="*", help="scenarios to time (default: all)")
    parser.add_argument("--root", help="the checkout whose `app` is measured (default: this one)")
    args = parser.parse_args()
    if not (1 <= args.streams <= 100_000 and 1 <= args.repeat <= 50):
        parser.error("--streams 1..100000, --repeat 1..50")
    runs = scenarios()
    if args.profile:
        if args.profile not in runs:
            parser.error(f"--profile: one of {', '.join(runs)}")
        chunks = stream_of(args.profile)
        runs[args.profile](chunks)  # warm caches outside the profile
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(args.streams):
            runs[args.profile](chunks)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(18)
        return 0
    names = args.only or list(runs)
    unknown = set(names) - set(runs)
    if unknown:
        parser.error(f"--only: unknown {', '.join(sorted(unknown))}; one of {', '.join(runs)}")
    print(
        f"app from {ROOT}; load average {os.getloadavg()[0]:.2f}; {args.streams} streams of {CHUNKS} chunks, "
        f"best of {args.repeat}"
    )
    for name in names:
        runs[name](stream_of(name))  # warm-up
    figures = timings({name: runs[name] for name in names}, args.streams, args.repeat)
    floor = figures.get("decoder-only", (0.0, 0.0))[0]
    print(f"{'scenario':<16} {'us/chunk':>9} {'steps only':>11} {'set-up us/stream':>17}")
    for name, (us, setup) in figures.items():
        print(f"{name:<16} {us:9.2f} {us - floor:11.2f} {setup:17.1f}")
    for kind in ("plain", "think", "renamed"):
        if f"{kind}-keep" in figures and f"{kind}-strip" in figures:
            cost = figures[f"{kind}-strip"][0] - figures[f"{kind}-keep"][0]
            print(f"{kind}: the think step costs {cost:+.2f} us/chunk")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""N concurrent SSE streams through each relay, side by side in one run: direct, nginx, the naive relay, cot-proxy.

    python bench/streams.py                      # 1,000 streams x 20 chunks, 50 ms apart; about 1 min
    python bench/streams.py --streams 200        # a cleaner gap comparison (the client saturates less)
    python bench/streams.py --modes keep strip   # cot-proxy twice: THINK_MODE=keep (step off) and strip (on)
    python bench/streams.py --think-content --modes keep strip   # think-heavy chunks (70 % inside <think>)
    python bench/streams.py --ref HEAD~3 HEAD    # also cot-proxy at those commits (git worktrees): before/after

Every target is started first (fake upstream bench/fake_upstream.py; bench/naive_relay.py and cot-proxy under
Gunicorn gevent with 2 workers; nginx with 2 worker processes when installed), warmed up, and its idle RSS
read; then each gets the same N streams, one target at a time, from one asyncio client (aiohttp). Per target:
completed count, time to first chunk (TTFC), inter-chunk gap, RSS (master + workers, idle and peak, sampled
every 100 ms), and for the Gunicorn targets worker CPU per relayed upstream chunk (/proc utime+stime over the
test / chunks relayed). "added" and "extra" are against direct in this run. Request latency is
bench/wrk_compare.py's (wrk): a Python client spends more CPU per answer than the relay being measured.
JSON: bench/results/streams_latest.json; logs: bench/results/streams-<target>.log.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import re
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    CHAT_PATH,
    HOST,
    JSON_HEADERS,
    REPO,
    BenchError,
    Proc,
    RssSampler,
    Server,
    app_label,
    chat_body,
    children,
    cpu_times,
    diff,
    fmt,
    gunicorn_settings,
    loadavg,
    log_problems,
    machine_info,
    ms,
    on_sigterm_exit,
    own_cpu_s,
    parse_env,
    pct,
    print_table,
    proxy_env,
    raise_nofile,
    start_naive,
    start_nginx,
    start_proxy,
    start_proxy_at,
    start_upstream,
    tree_pss_mb,
    tree_rss_mb,
    worktree,
    write_json,
)

SEQ_RE = re.compile(rb'"bench_seq":\s*(\d+)')
SATURATED = 0.8  # share of one core above which the single-threaded client or upstream is the bottleneck
REF_DIR = "/tmp/cot-streams-ref-{}"
TARGETS = {  # issue 13's floors for this round, checked on the default cot-proxy row
    "completed": "== N",
    "ttfc_p50_added_ms": "<= 500",
    "extra_gap_p99_ms": "<= 60",
    "idle_rss_mb": "<= 120",
    "peak_rss_mb": "<= 180",
}


@dataclass
class StreamRun:
    """What N concurrent streams saw."""

    streams: int
    completed: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    ttfc: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)
    """Arrival time between consecutive chunks (by `bench_seq`)."""
    excess: list[float] = field(default_factory=list)
    """Each gap minus its nominal spacing (interval x chunks apart)."""
    events: int = 0
    wall_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "streams": self.streams,
            "completed": self.completed,
            "errors": sum(self.errors.values()),
            "error_kinds": dict(self.errors.most_common(5)),
            "events_received": self.events,
            "ttfc_p50_ms": ms(pct(self.ttfc, 50)),
            "ttfc_p99_ms": ms(pct(self.ttfc, 99)),
            "gap_p50_ms": ms(pct(self.gaps, 50)),
            "gap_p99_ms": ms(pct(self.gaps, 99)),
            "gap_minus_nominal_p99_ms": ms(pct(self.excess, 99)),
            "wall_s": round(self.wall_s, 2),
        }


async def one_stream(
    session: aiohttp.ClientSession, url: str, body: bytes, interval: float, expect: int | None, run: StreamRun
) -> None:
    """One streamed chat request: time to first event, and the arrival time of each chunk."""
    start = time.perf_counter()
    first: float | None = None
    done = False
    seqs: list[tuple[float, int]] = []
    try:
        async with session.post(url, data=body, headers=JSON_HEADERS) as resp:
            if resp.status != 200:
                await resp.read()
                run.errors[f"HTTP {resp.status}"] += 1
                return
            buf = b""
            async for data in resp.content.iter_any():
                now = time.perf_counter()
                buf += data.replace(b"\r\n", b"\n") if b"\r" in data else data
                *events, buf = buf.split(b"\n\n")
                for event in events:
                    if not event.strip():
                        continue
                    run.events += 1
                    if first is None:
                        first = now - start
                    if event.startswith(b"data: [DONE]"):
                        done = True
                    elif m := SEQ_RE.search(event):
                        seqs.append((now, int(m.group(1))))
                    elif b'"error"' in event:
                        run.errors["in-band error event"] += 1
    except (asyncio.TimeoutError, aiohttp.ClientError, OSError) as exc:
        run.errors[type(exc).__name__] += 1
        return
    if first is not None:
        run.ttfc.append(first)
    for (t0, s0), (t1, s1) in itertools.pairwise(seqs):
        run.gaps.append(t1 - t0)
        run.excess.append(t1 - t0 - interval * (s1 - s0))
    if not done:
        run.errors["no [DONE]"] += 1
    elif expect is not None and len(seqs) != expect:
        run.errors["chunks missing"] += 1
    else:
        run.completed += 1


async def run_streams(
    port: int, n: int, chunks: int, interval_ms: float, think: bool = False, expect_all: bool = True
) -> StreamRun:
    """`n` streams started at once; bounded by a total timeout."""
    run = StreamRun(streams=n)
    extra: dict[str, Any] = {"stream": True, "bench_chunks": chunks, "bench_interval_ms": interval_ms}
    if think:
        extra["bench_think"] = True
    body = chat_body(**extra)
    budget = 60 + 2 * chunks * interval_ms / 1000
    connector = aiohttp.TCPConnector(limit=max(n, 1000), limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=budget, sock_connect=30)
    url = f"http://{HOST}:{port}{CHAT_PATH}"
    expect = chunks if expect_all else None
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter()
        tasks = [one_stream(session, url, body, interval_ms / 1000, expect, run) for _ in range(n)]
        await asyncio.wait_for(asyncio.gather(*tasks), budget + 10)
        run.wall_s = time.perf_counter() - start
    return run


def measure(
    port: int,
    upstream: Proc,
    n: int,
    chunks: int,
    interval_ms: float,
    think: bool,
    server: Server | None = None,
    gunicorn: bool = False,
) -> dict[str, Any]:
    """N concurrent streams to `port`, with the CPU the client and the upstream used; for a relay `server`
    also its peak RSS and, for a Gunicorn one, its workers' CPU per relayed upstream chunk."""
    master = server.proc.pid if server is not None else None
    workers = children(master) if master is not None else []
    client0, up0, wk0 = own_cpu_s(), sum(cpu_times([upstream.proc.pid])), cpu_times(workers)
    sampler = RssSampler(master) if master is not None else None
    with sampler or contextlib.nullcontext():
        # a proxy in THINK_MODE=strip drops think-only chunks: then complete only needs [DONE]
        run = asyncio.run(run_streams(port, n, chunks, interval_ms, think, expect_all=not think))
    client, up, wk = own_cpu_s() - client0, sum(cpu_times([upstream.proc.pid])) - up0, cpu_times(workers)
    out = run.summary()
    wall = max(run.wall_s, 1e-9)
    out.update(client_core_share=round(client / wall, 2), upstream_core_share=round(up / wall, 2))
    if sampler is not None:
        out.update(peak_rss_mb=round(sampler.peak, 1), rss_samples=sampler.samples)
    if gunicorn:
        user, system = wk[0] - wk0[0], wk[1] - wk0[1]
        relayed = run.completed * chunks
        out.update(
            worker_cpu_user_s=round(user, 2),
            worker_cpu_sys_s=round(system, 2),
            cpu_us_per_chunk=round((user + system) / relayed * 1e6, 1) if relayed else None,
        )
    return out


@dataclass
class Target:
    name: str
    label: str
    server: Server | None  # None: the fake upstream itself
    gunicorn: bool = False

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port


def start_targets(
    args: argparse.Namespace, upstream: Proc, tmp: Path, extra: dict[str, str], targets: list[Target]
) -> None:
    """Fills `targets` as it goes, so the caller's `finally` stops whatever started."""
    targets.append(Target("direct", "direct (fake upstream)", upstream))
    nginx = start_nginx(upstream, tmp, "streams-nginx")
    if nginx is not None:
        targets.append(Target("nginx", "nginx", nginx))
    targets.append(Target("naive", "naive relay", start_naive(upstream, "streams-naive"), gunicorn=True))
    here = app_label()
    for mode in args.modes or [None]:
        env = proxy_env(upstream, {**extra, **({"THINK_MODE": mode} if mode else {})})
        name = f"proxy-{mode}" if mode else "proxy"
        targets.append(
            Target(
                name,
                f"cot-proxy {here}{f' THINK_MODE={mode}' if mode else ''}",
                start_proxy(f"streams-{name}", env),
                gunicorn=True,
            )
        )
        for i, ref in enumerate(args.ref):
            server = start_proxy_at(Path(REF_DIR.format(i)), f"streams-ref{i}{f'-{mode}' if mode else ''}", env)
            targets.append(
                Target(
                    f"ref{i}-{mode}" if mode else f"ref{i}",
                    f"cot-proxy {ref}{f' THINK_MODE={mode}' if mode else ''}",
                    server,
                    gunicorn=True,
                )
            )


def rows(res: dict[str, Any], labels: dict[str, str], n: int) -> list[tuple[str, ...]]:
    direct = res["direct"]
    out: list[tuple[str, ...]] = [
        (
            "target",
            "completed",
            "errors",
            "TTFC p50 (s)",
            "added",
            "gap p99 (ms)",
            "extra",
            "gap-nominal p99",
            "idle RSS",
            "peak RSS",
            "CPU us/chunk",
        )
    ]
    for name, r in res.items():
        added = diff(r["ttfc_p50_ms"], direct["ttfc_p50_ms"]) if name != "direct" else None
        extra = diff(r["gap_p99_ms"], direct["gap_p99_ms"]) if name != "direct" else None
        out.append(
            (
                labels[name],
                f"{r['completed']}/{n}",
                fmt(r["errors"]),
                fmt(_s(r["ttfc_p50_ms"])),
                "-" if added is None else f"{added / 1000:+.2f}",
                fmt(r["gap_p99_ms"]),
                "-" if extra is None else f"{extra:+.0f}",
                fmt(r["gap_minus_nominal_p99_ms"]),
                fmt(r.get("idle_rss_mb")),
                fmt(r.get("peak_rss_mb")),
                fmt(r.get("cpu_us_per_chunk")),
            )
        )
    return out


def _s(value_ms: float | None) -> float | None:
    return None if value_ms is None else value_ms / 1000


def median_rows(rounds: list[dict[str, Any]], labels: dict[str, str]) -> list[tuple[str, ...]]:
    """TTFC added, gap p99 extra and CPU per chunk, each the median of the rounds: on a shared box one round's
    gap can swing by 100 ms either way, for direct too."""
    out: list[tuple[str, ...]] = [("target", "TTFC p50 added (s)", "gap p99 extra (ms)", "CPU us/chunk")]
    for name in rounds[0]:
        if name == "direct":
            continue
        added = [diff(r[name]["ttfc_p50_ms"], r["direct"]["ttfc_p50_ms"]) for r in rounds]
        extra = [diff(r[name]["gap_p99_ms"], r["direct"]["gap_p99_ms"]) for r in rounds]
        cpu = [r[name].get("cpu_us_per_chunk") for r in rounds]
        out.append(
            (
                labels[name],
                _median_fmt(added, lambda v: f"{v / 1000:+.2f}"),
                _median_fmt(extra, lambda v: f"{v:+.0f}"),
                _median_fmt(cpu, lambda v: f"{v:.1f}"),
            )
        )
    return out


def _median_fmt(values: list[float | None], show: Any) -> str:
    known = [v for v in values if v is not None]
    return show(statistics.median(known)) if known else "-"


def verdicts(rounds: list[dict[str, Any]], n: int) -> dict[str, Any]:
    """The issue's floors, on the default cot-proxy row, with the naive relay's figure beside. TTFC added and
    the gap's extra are the medians over the rounds (one round's gap swings too much to judge by); completed
    and RSS are the worst round's."""
    name = next((k for k in ("proxy", "proxy-strip") if k in rounds[0]), None) or next(
        k for k in rounds[0] if k.startswith("proxy")
    )

    def added(target: str, key: str) -> float | None:
        values = [diff(r[target][key], r["direct"][key]) for r in rounds if target in r]
        known = [v for v in values if v is not None]
        return statistics.median(known) if known else None

    done = min(r[name]["completed"] for r in rounds)
    idle = max(r[name].get("idle_rss_mb") or 1e9 for r in rounds)
    peak = max(r[name].get("peak_rss_mb") or 1e9 for r in rounds)
    ttfc, gap = added(name, "ttfc_p50_ms"), added(name, "gap_p99_ms")
    figures = {
        "completed": (done, done == n),
        "ttfc_p50_added_ms": (ttfc, ttfc is not None and ttfc <= 500),
        "extra_gap_p99_ms": (gap, gap is not None and gap <= 60),
        "idle_rss_mb": (idle, idle <= 120),
        "peak_rss_mb": (peak, peak <= 180),
    }
    out = {k: {"value": v, "target": TARGETS[k], "met": ok} for k, (v, ok) in figures.items()}
    if "naive" in rounds[0]:
        naive_ttfc, naive_gap = added("naive", "ttfc_p50_ms"), added("naive", "gap_p99_ms")
        out["below_naive"] = {
            "ttfc_p50": None if ttfc is None or naive_ttfc is None else ttfc <= naive_ttfc,
            "gap_p99": None if gap is None or naive_gap is None else gap <= naive_gap,
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=1000, help="concurrent streams (default 1000)")
    parser.add_argument("--chunks", type=int, default=20, help="chunks per stream (default 20)")
    parser.add_argument("--interval-ms", type=float, default=50.0, help="between chunks (default 50)")
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=("keep", "strip", "separate"),
        help="one cot-proxy per THINK_MODE (default: one, default configuration)",
    )
    parser.add_argument("--think-content", action="store_true", help="think-heavy chunks (bench_think)")
    parser.add_argument(
        "--ref", nargs="+", default=[], metavar="COMMIT", help="also cot-proxy at these commits (git worktrees)"
    )
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VAL", help="cot-proxy environment")
    parser.add_argument("--repeat", type=int, default=1, help="rounds over all targets (default 1)")
    args = parser.parse_args()
    if not (
        1 <= args.streams <= 10_000
        and 1 <= args.chunks <= 1000
        and 0 <= args.interval_ms <= 10_000
        and 1 <= args.repeat <= 5
        and len(args.ref) <= 3
    ):
        parser.error("--streams 1..10000, --chunks 1..1000, --interval-ms 0..10000, --repeat 1..5, --ref: 3 at most")
    extra = parse_env(args.env)
    on_sigterm_exit()
    nofile = raise_nofile()
    started, load0 = time.monotonic(), loadavg()
    targets: list[Target] = []
    upstream: Proc | None = None
    with contextlib.ExitStack() as stack:
        args.ref = [stack.enter_context(worktree(c, Path(REF_DIR.format(i)))) for i, c in enumerate(args.ref)]
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="cot-streams-"))
        try:
            upstream = start_upstream("streams-upstream")
            start_targets(args, upstream, Path(tmp), extra, targets)
            info = machine_info(gunicorn_settings(proxy_env(upstream, extra)), nofile)
            print(
                f"load {load0}; {args.streams} streams x {args.chunks} chunks, {args.interval_ms:g} ms apart; "
                f"targets: {', '.join(t.name for t in targets)}",
                flush=True,
            )
            for t in targets:  # warm: connections, pools, code paths
                asyncio.run(run_streams(t.port, 50, 5, 0.0, args.think_content, expect_all=False))
            time.sleep(1.0)  # let the warm-up's connections close before idle RSS is read
            idle = {t.name: round(tree_rss_mb(t.server.proc.pid), 1) for t in targets if t.name != "direct"}
            idle_pss = {t.name: round(tree_pss_mb(t.server.proc.pid), 1) for t in targets if t.name != "direct"}
            rounds: list[dict[str, Any]] = []
            for r in range(args.repeat):
                one: dict[str, Any] = {}
                for t in targets if r % 2 == 0 else targets[::-1]:
                    print(f"  round {r + 1}: {t.name} ...", flush=True)
                    relay = None if t.name == "direct" else t.server
                    one[t.name] = measure(
                        t.port,
                        upstream,
                        args.streams,
                        args.chunks,
                        args.interval_ms,
                        args.think_content,
                        relay,
                        t.gunicorn,
                    )
                    if t.name in idle:
                        one[t.name]["idle_rss_mb"] = idle[t.name]
                        one[t.name]["idle_pss_mb"] = idle_pss[t.name]
                rounds.append({t.name: one[t.name] for t in targets})
            res = rounds[0]
            problems = {t.name: log_problems(t.server) for t in targets if t.name != "direct"}
        finally:
            for t in reversed(targets):
                if t.server is not None and t.name != "direct":
                    t.server.stop()
            if upstream is not None:
                upstream.stop()
    labels = {t.name: t.label for t in targets}
    seconds = time.monotonic() - started
    for i, one in enumerate(rounds):
        print(f"\nround {i + 1} of {len(rounds)} (TTFC added, gap extra: vs direct in this run)")
        print_table(rows(one, labels, args.streams))
    if len(rounds) > 1:
        print(f"\nmedian over the {len(rounds)} rounds (each round's figure against direct in that round)")
        print_table(median_rows(rounds, labels))
    pss = {labels[n]: r["idle_pss_mb"] for n, r in res.items() if r.get("idle_pss_mb") is not None}
    shares = ", ".join(f"{k} {v}" for k, v in pss.items())
    print(f"\nidle PSS, MiB (shared pages split between master and workers): {shares}")
    v = verdicts(rounds, args.streams)
    print(
        f"\ntargets (cot-proxy default row; TTFC and gap: median of {len(rounds)} round(s)): "
        + "; ".join(
            f"{k} {fmt(x['value'])} {x['target']}: {'met' if x['met'] else 'MISSED'}"
            for k, x in v.items()
            if k != "below_naive"
        )
    )
    if "below_naive" in v:
        print(f"below the naive relay: {v['below_naive']}")
    d = res["direct"]
    if max(d["client_core_share"], d["upstream_core_share"]) >= SATURATED:
        print(
            f"note: on the direct leg the client used {d['client_core_share']:.0%} and the upstream "
            f"{d['upstream_core_share']:.0%} of a core: TTFC and gaps are bounded by them too."
        )
    print(f"log lines that look like problems: { {k: p['count'] for k, p in problems.items()} }")
    print(f"took {seconds:.0f} s; load {load0} at start, {loadavg()} at end")
    out = write_json(
        "streams_latest.json",
        {
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "argv": sys.argv[1:],
            "machine": info,
            "load_start": load0,
            "load_end": loadavg(),
            "streams": args.streams,
            "chunks": args.chunks,
            "interval_ms": args.interval_ms,
            "think_content": args.think_content,
            "labels": labels,
            "rounds": rounds,
            "targets": v,
            "log_problems": problems,
        },
    )
    print(f"wrote {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"streams: {exc}", file=sys.stderr)
        sys.exit(1)

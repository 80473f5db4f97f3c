"""Request cost with wrk, side by side in one run: direct, nginx, a naive Flask relay, cot-proxy (and at --ref).

    python bench/wrk_compare.py                  # about 2.5 min (4 targets, 8 s per wrk run)
    python bench/wrk_compare.py --ref 5a96d2e    # also cot-proxy at that commit (git worktree in /tmp/cot-ref)
    python bench/wrk_compare.py --streams --proxy-env THINK_MODE=keep --duration 5
    python bench/wrk_compare.py --profile        # then where a request's and a chunk's CPU goes (py-spy)

Targets, on free 127.0.0.1 ports:
  direct  bench/fake_upstream.py (aiohttp, one process)
  nginx   nginx -> the fake upstream (proxy_pass, keepalive pool, unbuffered), 2 worker processes; when installed
  naive   bench/naive_relay.py (Flask + one requests.Session) under Gunicorn gevent, 2 workers
  proxy   cot-proxy from this tree, default configuration (THINK_MODE=strip, metrics, JSON logs), 2 workers
  ref     cot-proxy from `git worktree add /tmp/cot-ref <commit>` (removed afterwards)
Tests (bench/wrk/chat.lua, ~1 KB chat POST; chat_stream.lua: "stream": true, 20 chunks):
  c=1   wrk -t1 -c1 -d<D>s --latency: exact p50/p99 from the script's done()
  c=32  wrk -t2 -c32 -d<D>s: req/s of answers with status < 400
  py    the same c=1 POSTs from Python's http.client (bench/common.py KeepAliveClient), with the client's own
        CPU per answer: why a Python client reports more added latency than wrk (see bench/README.md)
Each wrk test runs every target twice, in order then reversed, after 2 s of warm-up each; figures are the
median of the two. --profile: py-spy samples every Gunicorn worker of naive and proxy during one more c=32
run of each body (plain, then streamed) and prints CPU per request and per relayed chunk by package, and the
top functions. Logs: bench/results/wrk-<name>.log; summary: bench/results/wrk_latest.json.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    BENCH,
    CHAT_BODY,
    HOST,
    REPO,
    WORKERS,
    BenchError,
    Server,
    app_label,
    children,
    cpu_times,
    loadavg,
    log_problems,
    measure_latency,
    on_sigterm_exit,
    own_cpu_s,
    parse_env,
    print_table,
    proxy_env,
    raise_nofile,
    start_naive,
    start_nginx,
    start_proxy,
    start_proxy_at,
    start_upstream,
    worktree,
    write_json,
)

WRK = shutil.which("wrk") or "/usr/bin/wrk"
PY_SPY = shutil.which("py-spy")
REF_DIR = Path("/tmp/cot-ref")
STREAM_CHUNKS = 20
PY_N = 1000  # Python-client c=1 requests per target
# A sampled frame is `function (path:line)`, path relative to sys.path -> the bucket its CPU is counted in
# (first match wins; matched on the leaf frame, where the CPU was spent).
BUCKETS = [
    ("cot-proxy app/transforms", "(app/transforms/"),
    ("cot-proxy app/observability", "(app/observability/"),
    ("cot-proxy app/access", "(app/access/"),
    ("cot-proxy app/routing", "(app/routing/"),
    ("cot-proxy app/relay, upstream, exchange", "(app/relay.py"),
    ("cot-proxy app/relay, upstream, exchange", "(app/upstream.py"),
    ("cot-proxy app/relay, upstream, exchange", "(app/exchange.py"),
    ("cot-proxy app/sse", "(app/sse.py"),
    ("cot-proxy app (other)", "(app/"),
    ("naive_relay.py", "(naive_relay.py"),
    ("requests", "(requests/"),
    ("urllib3", "(urllib3/"),
    ("http.client", "(http/client.py"),
    ("werkzeug", "(werkzeug/"),
    ("flask", "(flask/"),
    ("gunicorn", "(gunicorn/"),
    ("gevent", "(gevent/"),
    ("prometheus_client", "(prometheus_client/"),
    ("logging", "(logging/"),
    ("json", "(json/"),
    ("email (header parsing)", "(email/"),
    ("threading", "(threading.py"),
    ("socket", "(socket.py"),
]


def check(name: str, port: int, stream: bool) -> None:
    """One answer per test body: 200 and a chat completion (or SSE ending in [DONE])."""
    body = CHAT_BODY[:-1] + (b',"stream":true,"bench_chunks":20}' if stream else b"}")
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        status, data = resp.status, resp.read()
    except OSError as exc:
        raise BenchError(f"{name}: {exc}") from None
    finally:
        conn.close()
    ok = status == 200 and (data.rstrip().endswith(b"data: [DONE]") if stream else b'"choices"' in data)
    if not ok:
        raise BenchError(f"{name}: {'stream' if stream else 'chat'} check got {status}: {data[:300]!r}")


def wrk(port: int, script: str, threads: int, conns: int, seconds: float, latency: bool = False) -> dict[str, Any]:
    argv = [WRK, f"-t{threads}", f"-c{conns}", f"-d{seconds:g}s", "--timeout", "5s", "-s", str(BENCH / "wrk" / script)]
    argv += ["--latency"] if latency else []
    argv.append(f"http://{HOST}:{port}/v1/chat/completions")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out = proc.communicate(timeout=seconds + 30)[0].decode(errors="replace")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    found = re.search(r"^WRK_RESULT (\{.*\})$", out, re.M)
    if proc.returncode != 0 or not found:
        raise BenchError(f"wrk failed ({proc.returncode}):\n{out}")
    res = json.loads(found.group(1))
    res["rps"] = (res["requests"] - res["status"]) / (res["duration_us"] / 1e6)
    res["errors"] = sum(res[k] for k in ("connect", "read", "write", "status", "timeout"))
    return res


def start_all(args: argparse.Namespace, extra: dict[str, str], tmp: Path, kids: dict[str, Server]) -> None:
    """Fills `kids` as it goes, so the caller's `finally` stops whatever started."""
    upstream = start_upstream("wrk-upstream")
    kids["direct"] = upstream
    nginx = start_nginx(upstream, tmp, "wrk-nginx")
    if nginx is not None:
        kids["nginx"] = nginx
    kids["naive"] = start_naive(upstream, "wrk-naive")
    env = proxy_env(upstream, extra)
    kids["proxy"] = start_proxy("wrk-proxy", env)
    if args.ref:
        kids["ref"] = start_proxy_at(REF_DIR, "wrk-ref", env)


def measure(
    kids: dict[str, Server], tests: dict[str, tuple[str, int, int, bool]], seconds: float
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    order = list(kids)
    for name in order:  # warm-up: 2 s at c=32 each
        wrk(kids[name].port, "chat.lua", 2, 32, 2)
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {t: {n: [] for n in order} for t in tests}
    for test, (script, threads, conns, lat) in tests.items():
        for name in order + order[::-1]:
            runs[test][name].append(wrk(kids[name].port, script, threads, conns, seconds, lat))
            r = runs[test][name][-1]
            print(
                f"  {test:<7} {name:<6} {r['rps']:9.0f} req/s  p50 {r['p50_us'] / 1000:7.3f} ms  "
                f"p99 {r['p99_us'] / 1000:7.3f} ms  errors {r['errors']}",
                flush=True,
            )
    return runs


def python_client(kids: dict[str, Server]) -> dict[str, Any]:
    """c=1 from http.client, one target after the other, with this process's CPU per answer."""
    out: dict[str, Any] = {}
    for name, kid in kids.items():
        before = own_cpu_s()
        lat = measure_latency({name: kid.port}, PY_N, PY_N, budget_s=60)[name]
        out[name] = {
            "p50_ms": lat["p50_ms"],
            "p99_ms": lat["p99_ms"],
            "client_cpu_us": round((own_cpu_s() - before) / max(lat["n"], 1) * 1e6, 1),
        }
    return out


def summarize(runs: dict[str, Any], py: dict[str, Any]) -> dict[str, Any]:
    med = {
        t: {
            n: {k: statistics.median(r[k] for r in rs) for k in ("rps", "p50_us", "p99_us")}
            | {"errors": sum(r["errors"] for r in rs), "non2xx": sum(r["status"] for r in rs)}
            for n, rs in per.items()
        }
        for t, per in runs.items()
    }
    out: dict[str, Any] = {}
    for name in med["c1"]:
        c1, c32, d1, d32 = med["c1"][name], med["c32"][name], med["c1"]["direct"], med["c32"]["direct"]
        row = {
            "p50_ms": c1["p50_us"] / 1000,
            "p99_ms": c1["p99_us"] / 1000,
            "added_p50_ms": (c1["p50_us"] - d1["p50_us"]) / 1000,
            "added_p99_ms": (c1["p99_us"] - d1["p99_us"]) / 1000,
            "rps_c32": c32["rps"],
            "rps_ratio_direct": c32["rps"] / d32["rps"],
            "rps_ratio_naive": c32["rps"] / med["c32"]["naive"]["rps"],
        }
        if "stream" in med:
            s = med["stream"]
            row |= {
                "stream_rps_c32": s[name]["rps"],
                "stream_ratio_direct": s[name]["rps"] / s["direct"]["rps"],
                "stream_ratio_naive": s[name]["rps"] / s["naive"]["rps"],
            }
        if py:
            row |= {
                "py_p50_ms": py[name]["p50_ms"],
                "py_added_p50_ms": py[name]["p50_ms"] - py["direct"]["p50_ms"],
                "py_client_cpu_us": py[name]["client_cpu_us"],
            }
        row["wrk_errors"] = sum(med[t][name]["errors"] for t in med)
        row["wrk_non2xx"] = sum(med[t][name]["non2xx"] for t in med)
        out[name] = row
    return out


COLUMNS = [
    ("p50 c=1", "p50_ms", ".3f"),
    ("p99 c=1", "p99_ms", ".3f"),
    ("+p50", "added_p50_ms", "+.3f"),
    ("+p99", "added_p99_ms", "+.3f"),
    ("req/s c=32", "rps_c32", ".0f"),
    ("/direct", "rps_ratio_direct", ".3f"),
    ("/naive", "rps_ratio_naive", ".3f"),
    ("stream req/s", "stream_rps_c32", ".0f"),
    ("/direct", "stream_ratio_direct", ".3f"),
    ("/naive", "stream_ratio_naive", ".3f"),
    ("py p50", "py_p50_ms", ".3f"),
    ("py +p50", "py_added_p50_ms", "+.3f"),
    ("py client us/req", "py_client_cpu_us", ".0f"),
    ("wrk errors", "wrk_errors", "d"),
    ("non-2xx", "wrk_non2xx", "d"),
]


def table(summary: dict[str, Any], labels: dict[str, str]) -> list[tuple[str, ...]]:
    cols = [c for c in COLUMNS if c[1] in next(iter(summary.values()))]
    rows: list[tuple[str, ...]] = [("target (ms; req/s)", *(c[0] for c in cols))]
    rows += [(labels[n], *(format(r[c[1]], c[2]) for c in cols)) for n, r in summary.items()]
    return rows


# -- --profile ---------------------------------------------------------------------------


def bucket(frame: str) -> str:
    for name, needle in BUCKETS:
        if needle in frame:
            return name
    return "python stdlib/other" if ".py" in frame else "native/other"


def spy(pids: list[int], seconds: int, out_dir: Path) -> list[Path]:
    """py-spy on each pid for `seconds` (non-blocking sampling, 500 Hz): the raw folded-stack files."""
    procs, files = [], []
    for pid in pids:
        path = out_dir / f"spy-{pid}.txt"
        argv = [
            PY_SPY,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(max(1, int(seconds))),
            "--rate",
            "500",
            "--format",
            "raw",
            "--nonblocking",
            "--output",
            str(path),
        ]
        procs.append(
            subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        )
        files.append(path)
    for proc in procs:
        try:
            proc.wait(seconds + 30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    return [f for f in files if f.exists()]


def fold(files: list[Path]) -> tuple[Counter[str], Counter[str], int]:
    """(samples per bucket of the leaf frame, samples per leaf function, all samples)."""
    buckets: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = 0
    for path in files:
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            leaf = stack.rsplit(";", 1)[-1]
            buckets[bucket(leaf)] += n
            leaves[leaf] += n
            total += n
    return buckets, leaves, total


def profile(kids: dict[str, Server], seconds: float, tmp: Path) -> dict[str, Any]:
    """Where the Gunicorn workers' CPU goes, for naive and proxy, per request and per relayed chunk.

    The workers' CPU (/proc utime+stime over one c=32 wrk run) is divided by what the run completed, and
    split by py-spy's samples of the middle of the run: on a loaded box a sample also counts moments a
    worker was runnable but not running, so sample counts alone would overstate CPU."""
    if PY_SPY is None:
        print("--profile needs py-spy: pip install py-spy", file=sys.stderr)
        return {}
    out: dict[str, Any] = {}
    for name in ("naive", "proxy"):
        for test, script in (("request", "chat.lua"), ("stream", "chat_stream.lua")):
            pids = children(kids[name].proc.pid)
            run_dir = tmp / f"{name}-{test}"
            run_dir.mkdir()
            result: dict[str, Any] = {}
            loader = threading.Thread(
                target=lambda r=result, p=kids[name].port, s=script: r.update(wrk(p, s, 2, 32, seconds)), daemon=True
            )
            cpu0 = sum(cpu_times(pids))
            loader.start()
            time.sleep(0.3)  # py-spy attaches once the load runs
            files = spy(pids, max(1, int(seconds - 0.6)), run_dir)  # py-spy takes whole seconds
            loader.join(seconds + 40)
            cpu = sum(cpu_times(pids)) - cpu0
            buckets, leaves, total = fold(files)
            done = result.get("requests", 0) - result.get("status", 0)
            per = cpu / max(done, 1) * 1e6
            share = per / max(total, 1)
            out[f"{name}_{test}"] = {
                "requests": done,
                "samples": total,
                "cpu_s": round(cpu, 2),
                "us_per_request": round(per, 1),
                "buckets_us": {k: round(v * share, 1) for k, v in buckets.most_common()},
                "top": [(k, round(v * share, 2)) for k, v in leaves.most_common(12)],
            }
        plain, stream = out[f"{name}_request"], out[f"{name}_stream"]
        out[f"{name}_chunk"] = {
            "us_per_chunk": round((stream["us_per_request"] - plain["us_per_request"]) / STREAM_CHUNKS, 1)
        }
    return out


def print_profile(prof: dict[str, Any]) -> None:
    for key, p in prof.items():
        name, test = key.split("_")
        if test == "chunk":
            print(
                f"\n{name}: CPU per relayed chunk = (streamed request - plain request) / {STREAM_CHUNKS} = "
                f"{p['us_per_chunk']:.1f} us"
            )
            continue
        what = "plain chat request" if test == "request" else f"streamed request ({STREAM_CHUNKS} chunks)"
        print(
            f"\n{name}: worker CPU per {what}: {p['us_per_request']:.0f} us ({p['requests']} requests, "
            f"{p['cpu_s']} s CPU, split by {p['samples']} py-spy samples)"
        )
        for label, us in p["buckets_us"].items():
            print(f"  {us:8.1f} us  {label}")
        print("  top functions (own time):")
        for func, us in p["top"][:10]:
            print(f"  {us:8.1f} us  {func[:110]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--proxy-env", action="append", default=[], metavar="KEY=VAL", help="for proxy and ref")
    parser.add_argument("--ref", metavar="COMMIT", help="also measure cot-proxy at this commit")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per wrk run (default 8)")
    parser.add_argument("--streams", action="store_true", help="add streamed chat req/s at c=32")
    parser.add_argument("--profile", action="store_true", help="then profile naive and proxy workers (py-spy)")
    parser.add_argument("--no-python-client", action="store_true", help="skip the http.client c=1 comparison")
    args = parser.parse_args()
    extra = parse_env(args.proxy_env)
    if not 1 <= args.duration <= 120:
        parser.error("--duration 1..120")
    if not Path(WRK).exists():
        raise BenchError("wrk not found: apt-get install wrk")
    on_sigterm_exit()
    raise_nofile()
    started, load = time.monotonic(), loadavg()
    here = app_label()
    kids: dict[str, Server] = {}
    py: dict[str, Any] = {}
    prof: dict[str, Any] = {}
    with worktree(args.ref, REF_DIR) as ref, tempfile.TemporaryDirectory(prefix="cot-wrk-") as tmp:
        try:
            start_all(argparse.Namespace(**{**vars(args), "ref": ref}), extra, Path(tmp), kids)
            tests = {"c1": ("chat.lua", 1, 1, True), "c32": ("chat.lua", 2, 32, False)}
            if args.streams:
                tests["stream"] = ("chat_stream.lua", 2, 32, False)
            for name, kid in kids.items():
                check(name, kid.port, False)
                if args.streams:
                    check(name, kid.port, True)
            print(f"measuring {', '.join(kids)}; {args.duration:g} s per wrk run; load {load}", flush=True)
            runs = measure(kids, tests, args.duration)
            if not args.no_python_client:
                print(f"  py c=1: {PY_N} http.client POSTs per target ...", flush=True)
                py = python_client(kids)
            if args.profile:
                print("profiling naive and proxy workers (py-spy) ...", flush=True)
                prof = profile(kids, args.duration, Path(tmp))
            summary = summarize(runs, py)
            problems = {name: log_problems(kid)["count"] for name, kid in kids.items()}
        finally:
            for kid in reversed(list(kids.values())):
                kid.stop()
    seconds = time.monotonic() - started
    labels = {
        "direct": "direct (fake upstream)",
        "nginx": "nginx",
        "naive": "naive Flask relay",
        "proxy": f"cot-proxy {here}",
        "ref": f"cot-proxy {ref} (ref)",
    }
    print()
    print_table(table(summary, {n: labels[n] for n in summary}))
    print(
        "+p50/+p99 = target - direct at c=1 (wrk, median of 2 runs); /direct, /naive = req/s ratios; "
        "py = http.client c=1"
    )
    print_profile(prof)
    print(
        f"log lines that look like problems: {problems}; run took {seconds:.0f} s; "
        f"load {load} at start, {loadavg()} at end (other work on the box skews it)"
    )
    out = write_json(
        "wrk_latest.json",
        {
            "head": here,
            "ref": ref,
            "duration_s": args.duration,
            "proxy_env": extra,
            "workers": WORKERS,
            "nproc": os.cpu_count(),
            "load_start": load,
            "load_end": loadavg(),
            "wall_s": round(seconds, 1),
            "summary": summary,
            "runs": runs,
            "python_client": py,
            "profile": prof,
            "log_problems": problems,
            "wrk": subprocess.run([WRK, "-v"], capture_output=True, text=True, timeout=10).stdout.splitlines()[:1],
        },
    )
    print(f"wrote {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"wrk_compare: {exc}", file=sys.stderr)
        sys.exit(1)

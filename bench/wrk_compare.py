"""wrk side by side: fake upstream direct, a naive Flask relay, cot-proxy (and cot-proxy at --ref), one run.

    python bench/wrk_compare.py                  # direct, naive, proxy; about 2 min (with --ref about 2.5)
    python bench/wrk_compare.py --ref 5a96d2e    # also cot-proxy at that commit (git worktree in /tmp/cot-ref)
    python bench/wrk_compare.py --streams --proxy-env THINK_MODE=keep --duration 5

Targets, all under Gunicorn (gevent, 2 workers) except the upstream, on free 127.0.0.1 ports:
  direct  bench/fake_upstream.py (aiohttp, one process)
  naive   bench/naive_relay.py (Flask + one requests.Session; /work/shared/reference/baseline.md)
  proxy   cot-proxy from this tree, default configuration (THINK_MODE=strip, metrics, JSON logs)
  ref     cot-proxy from `git worktree add /tmp/cot-ref <commit>` (removed afterwards)
Tests (bench/wrk/chat.lua, ~1 KB chat POST; chat_stream.lua: "stream": true, 20 chunks):
  c=1   wrk -t1 -c1 -d<D>s --latency: exact p50/p99 from the script's done()
  c=32  wrk -t2 -c32 -d<D>s: req/s of answers with status < 400
Each test runs every target twice, in order then reversed (direct naive proxy ref ref proxy naive direct),
after 2 s of warm-up each; figures are the median of the two. Logs: bench/results/wrk-<name>.log;
summary: bench/results/wrk_latest.json.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
RESULTS = BENCH / "results"
WRK = shutil.which("wrk") or "/usr/bin/wrk"
REF_DIR = Path("/tmp/cot-ref")
WORKERS = 2
# Left out of the proxies' environment: they would change routing or the listen address.
DROP = {"TARGET_BASE_URL", "BACKEND_URL", "OLLAMA_BASE_URL", "COT_PROXY_CONFIG", "DEFAULT_PROVIDER",
        "DEFAULT_BACKEND", "GATEWAY_URL", "GATEWAY_HOST", "GATEWAY_PORT", "PROXY_ADDR", "WEB_CONCURRENCY"}
PROBLEM = re.compile(r'Traceback|WORKER TIMEOUT|"level": ?"(error|warning|critical)"|\[(error|critical)\]', re.I)


class BenchError(RuntimeError):
    pass


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind((HOST, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Child:
    """A server in its own process group, output to bench/results/wrk-<name>.log."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], port: int, cwd: Path = REPO) -> None:
        self.name, self.port = name, port
        self.log_path = RESULTS / f"wrk-{name}.log"
        self._log = open(self.log_path, "wb")
        self.popen = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=self._log,
                                      stderr=subprocess.STDOUT, start_new_session=True)

    def children(self) -> int:
        try:
            return len(Path(f"/proc/{self.popen.pid}/task/{self.popen.pid}/children").read_text().split())
        except OSError:
            return 0

    def wait_ready(self, path: str, workers: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise BenchError(f"{self.name} exited with {self.popen.returncode}; see {self.log_path}")
            if request(self.port, "GET", path)[0] == 200 and self.children() >= workers:
                return
            time.sleep(0.1)
        raise BenchError(f"{self.name} not ready on port {self.port} within {timeout:.0f} s; see {self.log_path}")

    def stop(self) -> None:
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):  # SIGKILL: leftovers only
            try:
                os.killpg(self.popen.pid, sig)  # the group this script created
                self.popen.wait(wait)
            except (ProcessLookupError, PermissionError, subprocess.TimeoutExpired):
                pass
        self._log.close()

    def problems(self) -> int:
        return sum(1 for line in self.log_path.read_text(errors="replace").splitlines() if PROBLEM.search(line))


def request(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=5)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    except OSError:
        return 0, b""
    finally:
        conn.close()


def check(name: str, port: int, stream: bool) -> None:
    """One answer per test body: 200 and a chat completion (or SSE ending in [DONE])."""
    extra = ',"stream":true,"bench_chunks":20' if stream else ""
    words = " ".join(f"word{i}" for i in range(130))
    body = ('{"model":"bench-model","messages":[{"role":"system","content":"You are a concise assistant used for '
            f'benchmarking."}},{{"role":"user","content":"{words}"}}],"temperature":0.2,"max_tokens":256{extra}}}')
    status, data = request(port, "POST", "/v1/chat/completions", body.encode())
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


def start_all(args: argparse.Namespace, extra: dict[str, str], kids: dict[str, Child]) -> None:
    """Fills `kids` as it goes, so the caller's `finally` stops whatever started."""
    up_port, naive_port, proxy_port, ref_port = free_ports(4)
    base = {k: v for k, v in os.environ.items() if k not in DROP}
    kids["direct"] = Child("upstream", [sys.executable, str(BENCH / "fake_upstream.py"), "--port", str(up_port)],
                           base, up_port)
    kids["direct"].wait_ready("/v1/models", 0, 20)
    gunicorn = [sys.executable, "-m", "gunicorn"]
    naive_env = {**base, "NAIVE_UPSTREAM": f"http://{HOST}:{up_port}/v1"}
    kids["naive"] = Child("naive", gunicorn + ["-k", "gevent", "-w", str(WORKERS), "-b", f"{HOST}:{naive_port}",
                                               "--chdir", str(BENCH), "naive_relay:app"], naive_env, naive_port)
    cot = gunicorn + ["-c", "gunicorn.conf.py", "cot_proxy:app"]
    env = {**base, "TARGET_BASE_URL": f"http://{HOST}:{up_port}/v1/", "WEB_CONCURRENCY": str(WORKERS),
           "HOST": HOST, **extra}
    kids["proxy"] = Child("proxy", cot, {**env, "PORT": str(proxy_port)}, proxy_port)
    if args.ref:
        kids["ref"] = Child("ref", cot, {**env, "PORT": str(ref_port)}, ref_port, cwd=REF_DIR)
    for name, kid in kids.items():
        if name != "direct":
            kid.wait_ready("/healthz" if name in ("proxy", "ref") else "/v1/models", WORKERS)


def git(*argv: str, cwd: Path = REPO) -> str:
    out = subprocess.run(["git", *argv], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)
    if out.returncode != 0:
        raise BenchError(f"git {' '.join(argv)}: {out.stderr.strip()}")
    return out.stdout.strip()


def measure(kids: dict[str, Child], tests: dict[str, tuple[str, int, int, bool]], seconds: float) -> dict[str, Any]:
    order = list(kids)
    for name in order:  # warm-up: 2 s at c=32 each
        wrk(kids[name].port, "chat.lua", 2, 32, 2)
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {t: {n: [] for n in order} for t in tests}
    for test, (script, threads, conns, lat) in tests.items():
        for name in order + order[::-1]:
            runs[test][name].append(wrk(kids[name].port, script, threads, conns, seconds, lat))
            r = runs[test][name][-1]
            print(f"  {test:<7} {name:<6} {r['rps']:9.0f} req/s  p50 {r['p50_us'] / 1000:7.3f} ms  "
                  f"p99 {r['p99_us'] / 1000:7.3f} ms  errors {r['errors']}", flush=True)
    return runs


def summarize(runs: dict[str, Any]) -> dict[str, Any]:
    med = {t: {n: {k: statistics.median(r[k] for r in rs) for k in ("rps", "p50_us", "p99_us")}
               | {"errors": sum(r["errors"] for r in rs), "non2xx": sum(r["status"] for r in rs)}
               for n, rs in per.items()} for t, per in runs.items()}
    out: dict[str, Any] = {}
    for name in med["c1"]:
        c1, c32, d1, d32 = med["c1"][name], med["c32"][name], med["c1"]["direct"], med["c32"]["direct"]
        row = {"p50_ms": c1["p50_us"] / 1000, "p99_ms": c1["p99_us"] / 1000,
               "added_p50_ms": (c1["p50_us"] - d1["p50_us"]) / 1000,
               "added_p99_ms": (c1["p99_us"] - d1["p99_us"]) / 1000,
               "rps_c32": c32["rps"], "rps_ratio_direct": c32["rps"] / d32["rps"],
               "rps_ratio_naive": c32["rps"] / med["c32"]["naive"]["rps"]}
        if "stream" in med:
            s = med["stream"]
            row |= {"stream_rps_c32": s[name]["rps"], "stream_ratio_direct": s[name]["rps"] / s["direct"]["rps"],
                    "stream_ratio_naive": s[name]["rps"] / s["naive"]["rps"]}
        row["wrk_errors"] = sum(med[t][name]["errors"] for t in med)
        row["wrk_non2xx"] = sum(med[t][name]["non2xx"] for t in med)
        out[name] = row
    return out


def print_table(summary: dict[str, Any], labels: dict[str, str]) -> None:
    cols = [("p50 c=1", "p50_ms", ".3f"), ("p99 c=1", "p99_ms", ".3f"), ("+p50", "added_p50_ms", "+.3f"),
            ("+p99", "added_p99_ms", "+.3f"), ("req/s c=32", "rps_c32", ".0f"), ("/direct", "rps_ratio_direct", ".3f"),
            ("/naive", "rps_ratio_naive", ".3f"), ("stream req/s", "stream_rps_c32", ".0f"),
            ("/direct", "stream_ratio_direct", ".3f"), ("/naive", "stream_ratio_naive", ".3f"),
            ("wrk errors", "wrk_errors", "d"), ("non-2xx", "wrk_non2xx", "d")]
    cols = [c for c in cols if c[1] in next(iter(summary.values()))]
    rows = [["target (ms; req/s)"] + [c[0] for c in cols]]
    rows += [[labels[n]] + [format(r[c[1]], c[2]) for c in cols] for n, r in summary.items()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--proxy-env", action="append", default=[], metavar="KEY=VAL", help="for proxy and ref")
    parser.add_argument("--ref", metavar="COMMIT", help="also measure cot-proxy at this commit")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per wrk run (default 8)")
    parser.add_argument("--streams", action="store_true", help="add streamed chat req/s at c=32")
    args = parser.parse_args()
    extra = dict(p.split("=", 1) for p in args.proxy_env if "=" in p)
    if len(extra) != len(args.proxy_env) or not 1 <= args.duration <= 120:
        parser.error("--proxy-env takes KEY=VAL; --duration 1..120")
    RESULTS.mkdir(exist_ok=True)
    started, load = time.monotonic(), os.getloadavg()
    head = git("rev-parse", "--short", "HEAD")
    # "proxy" runs this tree as it is: uncommitted changes to the app count, and are named
    dirty = [line.split(maxsplit=1)[-1] for line in
             git("status", "--porcelain", "--", "app", "cot_proxy.py", "gunicorn.conf.py").splitlines()]
    ref = git("rev-parse", "--short", args.ref + "^{commit}") if args.ref else None
    kids: dict[str, Child] = {}
    worktree = False
    try:
        if ref:
            if REF_DIR.exists():
                raise BenchError(f"{REF_DIR} exists; remove it (git worktree remove {REF_DIR})")
            git("worktree", "add", "--detach", str(REF_DIR), ref)
            worktree = True
        start_all(args, extra, kids)
        tests = {"c1": ("chat.lua", 1, 1, True), "c32": ("chat.lua", 2, 32, False)}
        if args.streams:
            tests["stream"] = ("chat_stream.lua", 2, 32, False)
        for name, kid in kids.items():
            check(name, kid.port, False)
            if args.streams:
                check(name, kid.port, True)
        print(f"measuring {', '.join(kids)}; {args.duration:g} s per wrk run", flush=True)
        runs = measure(kids, tests, args.duration)
        summary = summarize(runs)
        problems = {name: kid.problems() for name, kid in kids.items()}
    finally:
        for kid in reversed(list(kids.values())):
            kid.stop()
        if worktree:
            try:
                git("worktree", "remove", "--force", str(REF_DIR))
            except BenchError as exc:
                print(f"warning: {exc}", file=sys.stderr)
    seconds = time.monotonic() - started
    labels = {"direct": "direct (fake upstream)", "naive": "naive Flask relay",
              "proxy": f"cot-proxy {head}{'+dirty' if dirty else ''}",
              "ref": f"cot-proxy {ref} (ref)"}
    print()
    print_table(summary, {n: labels[n] for n in summary})
    print("+p50/+p99 = target - direct at c=1 (median of 2 runs); /direct, /naive = req/s ratios")
    if dirty:
        print(f"+dirty: the proxy ran this tree with uncommitted changes: {', '.join(dirty)}")
    print(f"log lines that look like problems: {problems}; run took {seconds:.0f} s; "
          f"load average {load[0]:.2f} at start, {os.getloadavg()[0]:.2f} at end (other work on the box skews it)")
    out = {"head": head, "dirty": dirty, "ref": ref, "duration_s": args.duration, "proxy_env": extra,
           "workers": WORKERS, "nproc": os.cpu_count(), "loadavg_start": load, "loadavg_end": os.getloadavg(),
           "wall_s": round(seconds, 1),
           "summary": summary, "runs": runs, "log_problems": problems,
           "wrk": subprocess.run([WRK, "-v"], capture_output=True, text=True, timeout=10).stdout.splitlines()[:1]}
    (RESULTS / "wrk_latest.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {RESULTS / 'wrk_latest.json'}")
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"wrk_compare: {exc}", file=sys.stderr)
        sys.exit(1)

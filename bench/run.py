"""cot-proxy benchmark: the proxy under real Gunicorn vs the fake upstream called directly.

    python bench/run.py [--quick] [--streams N] [--env KEY=VAL ...] [--think]
    python bench/run.py --routing [--quick] [--env KEY=VAL ...]

Starts `bench/fake_upstream.py` and `gunicorn -c gunicorn.conf.py cot_proxy:app` on free
127.0.0.1 ports, then measures, proxy vs direct in the same run: added latency at c=1,
req/s at c=32, N concurrent SSE streams (time to first chunk, inter-chunk gaps), the
proxy's RSS (idle and peak) and CPU per relayed chunk. Prints a summary with the targets
and writes it to bench/results/latest.json.

`--routing` instead runs two proxies side by side, a single-target one (TARGET_BASE_URL)
and a routed one (a three-provider COT_PROXY_CONFIG), and compares c=1 latency and c=32
req/s of direct, single, and routed with a `provider/model` name and with an alias;
written to bench/results/latest-routing.json. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import importlib.metadata
import itertools
import json
import math
import os
import platform
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
HOST = "127.0.0.1"
CHAT_PATH = "/v1/chat/completions"
JSON_HEADERS = {"content-type": "application/json", "authorization": "Bearer bench"}
SEQ_RE = re.compile(rb'"bench_seq":\s*(\d+)')
CLK_TCK = os.sysconf("SC_CLK_TCK")
SATURATED = 0.8  # share of one core above which a single-threaded load process is the bottleneck
TARGETS = {
    "added_p50_ms": ("<=", 1.0),
    "rps_ratio": (">=", 0.25),
    "streams_completed": ("==", None),  # all of --streams
    "extra_gap_p99_ms": ("<=", 25.0),
    "idle_rss_mb": ("<=", 150.0),
}


def chat_body(**extra: Any) -> bytes:
    """A ~1 KB chat request."""
    prompt = " ".join(f"word{i}" for i in range(130))
    body = {
        "model": "bench-model",
        "messages": [
            {"role": "system", "content": "You are a concise assistant used for benchmarking."},
            {"role": "user", "content": prompt},
        ],
        "temperature": 0.2,
        "max_tokens": 256,
        **extra,
    }
    return orjson.dumps(body)


CHAT_BODY = chat_body()


class BenchError(RuntimeError):
    """The benchmark cannot go on (a process died, a port never answered)."""


@dataclass(frozen=True)
class Plan:
    """Sizes of each test."""

    latency_n: int  # sequential requests per target
    latency_block: int  # requests per block; blocks alternate direct/proxy (ABBA)
    rps_seconds: float  # per round and target
    rps_rounds: int
    rps_concurrency: int
    streams: int
    chunks: int
    interval_ms: float
    warmup_n: int
    latency_budget_s: float = 180.0  # the latency test stops after the first round of blocks past this


FULL = Plan(2000, 100, 4.0, 2, 32, 1000, 20, 50.0, 300)
QUICK = Plan(300, 50, 1.5, 1, 32, 200, 20, 50.0, 100)
# --routing: four targets, no stream test (streams/chunks/interval unused). Small blocks give many
# paired blocks for the routed-minus-single interval; the time budget keeps a loaded box under ~60 s.
ROUTING = Plan(2000, 40, 1.25, 4, 32, 0, 0, 0.0, 100, latency_budget_s=22.0)
ROUTING_QUICK = Plan(300, 25, 0.75, 2, 32, 0, 0, 0.0, 100, latency_budget_s=8.0)


# -- processes ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def raise_nofile() -> int:
    """Raise RLIMIT_NOFILE to the hard limit; children inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Proc:
    """A server child on `port`, in its own process group; `stop()` ends it and anything it left."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], port: int) -> None:
        self.name = name
        self.port = port
        self.log_path = RESULTS / f"{name}.log"
        self._log = open(self.log_path, "wb")  # closed in stop()
        self.popen = subprocess.Popen(
            argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pid = self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait_ready(self, path: str, timeout: float, workers: int = 0) -> None:
        """Poll `path` until 200 (and until `workers` children run); bounded."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise BenchError(f"{self.name} exited with {self.popen.returncode}:\n{self.log_tail()}")
            if http_ok(self.port, path) and len(children(self.pid)) >= workers:
                return
            time.sleep(0.1)
        raise BenchError(f"{self.name} not ready on port {self.port} within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        if self.alive():
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.pid, signal.SIGKILL)  # the group we created: leftovers only
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.popen.wait(5)
        except subprocess.TimeoutExpired:
            pass
        self._log.close()


def http_ok(port: int, path: str) -> bool:
    conn = http.client.HTTPConnection(HOST, port, timeout=2)
    try:
        conn.request("GET", path)
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def start_upstream(name: str = "upstream") -> Proc:
    port = free_port()
    argv = [sys.executable, str(REPO / "bench" / "fake_upstream.py"), "--port", str(port)]
    proc = Proc(name, argv, dict(os.environ), port)
    try:
        proc.wait_ready("/v1/models", 20)
    except BaseException:
        proc.stop()
        raise
    return proc


def proxy_env(upstream: Proc, extra: dict[str, str]) -> dict[str, str]:
    """The parent's environment, pointed at the fake upstream on a free port, plus `extra`."""
    env = dict(os.environ)
    env.update(TARGET_BASE_URL=f"http://{HOST}:{upstream.port}/v1/", PORT=str(free_port()), HOST=HOST)
    env.update(extra)
    return env


def gunicorn_settings(env: dict[str, str]) -> dict[str, Any]:
    """Worker class, workers and threads as gunicorn.conf.py resolves them under `env`."""
    code = (
        "import json, runpy; c = runpy.run_path('gunicorn.conf.py'); "
        "print(json.dumps({k: c.get(k) for k in ('worker_class', 'workers', 'threads', 'worker_connections')}))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=30, check=False)
    if out.returncode != 0:
        raise BenchError(f"gunicorn.conf.py does not load:\n{(out.stderr or out.stdout).strip()}")
    return dict(json.loads(out.stdout))


def launch_proxy(name: str, env: dict[str, str]) -> Proc:
    """The proxy under Gunicorn, started but not waited for (see `Proc.wait_ready`)."""
    argv = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "cot_proxy:app"]
    return Proc(name, argv, env, int(env["PORT"]))


def start_proxy(name: str, env: dict[str, str], workers: int) -> Proc:
    proc = launch_proxy(name, env)
    try:
        proc.wait_ready("/healthz", 60, workers)
    except BaseException:
        proc.stop()
        raise
    return proc


# -- /proc ----------------------------------------------------------------------


def children(pid: int) -> list[int]:
    """Direct children of `pid`."""
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        pass
    except OSError:
        return []
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry.name))
    return kids


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_mb(master: int) -> float:
    """RSS of the Gunicorn master plus its workers, MiB."""
    return (rss_kb(master) + sum(rss_kb(c) for c in children(master))) / 1024


def cpu_times(pids: Iterable[int]) -> tuple[float, float]:
    """Summed (user, system) CPU seconds of `pids`, from /proc/<pid>/stat."""
    user = system = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user += int(fields[11])
        system += int(fields[12])
    return user / CLK_TCK, system / CLK_TCK


def own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class RssSampler:
    """Samples the proxy's RSS every `period` s in a thread; `peak` after the `with` block."""

    def __init__(self, master: int, period: float = 0.1) -> None:
        self.master = master
        self.period = period
        self.peak = 0.0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss_mb(self.master))
            self.samples += 1
            self._stop.wait(self.period)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)


# -- statistics -------------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no data."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 3)


def diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 3)


# -- a. latency at c=1 ----------------------------------------------------------


class KeepAliveClient:
    """Sequential POSTs of `body` over one kept-alive connection."""

    def __init__(self, port: int, body: bytes = CHAT_BODY) -> None:
        self.port = port
        self.body = body
        self.conn = self._connect()
        self.reconnects = 0

    def _connect(self) -> http.client.HTTPConnection:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=30)
        conn.connect()
        assert conn.sock is not None
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def post(self) -> float:
        """One chat POST; seconds from send to last body byte. Reconnects once if the server closed."""
        for attempt in (0, 1):
            try:
                start = time.perf_counter()
                self.conn.request("POST", CHAT_PATH, self.body, JSON_HEADERS)
                resp = self.conn.getresponse()
                resp.read()
                elapsed = time.perf_counter() - start
            except (ConnectionError, http.client.HTTPException):
                if attempt:
                    raise
                self.conn.close()
                self.conn = self._connect()
                self.reconnects += 1
                continue
            if resp.status != 200:
                raise BenchError(f"port {self.port}: HTTP {resp.status} on {CHAT_PATH}")
            return elapsed
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.conn.close()


def measure_latency(ports: dict[str, int], n: int, block: int, budget_s: float = 180.0,
                    bodies: dict[str, bytes] | None = None) -> dict[str, Any]:
    """`n` sequential POSTs per target (`bodies[name]`, default CHAT_BODY), in blocks alternating
    ABBA (for more targets: in order, then reversed); p50/p99 per target and the p50 of each block.
    Stops after the first whole round of blocks past `budget_s`."""
    bodies = bodies or {}
    clients = {name: KeepAliveClient(port, bodies.get(name, CHAT_BODY)) for name, port in ports.items()}
    samples: dict[str, list[float]] = {name: [] for name in ports}
    blocks: dict[str, list[float | None]] = {name: [] for name in ports}
    names = list(ports)
    deadline = time.monotonic() + budget_s
    try:
        for b in range(math.ceil(n / block)):
            for name in names if b % 2 == 0 else names[::-1]:
                values = [clients[name].post() for _ in range(min(block, n - len(samples[name])))]
                samples[name].extend(values)
                blocks[name].append(ms(pct(values, 50)))
            if time.monotonic() > deadline:
                break
    finally:
        for client in clients.values():
            client.close()
    return {
        name: {"n": len(values), "p50_ms": ms(pct(values, 50)), "p99_ms": ms(pct(values, 99)),
               "mean_ms": ms(sum(values) / len(values)), "reconnects": clients[name].reconnects,
               "block_p50_ms": blocks[name]}
        for name, values in samples.items()
    }


# -- b. req/s at c=32 ------------------------------------------------------------


async def rps_round(port: int, concurrency: int, seconds: float, max_requests: int = 2_000_000,
                    body: bytes = CHAT_BODY) -> Counter[str]:
    """Closed-loop load for `seconds`: counts of ok and error answers, and the elapsed `us`."""
    counts = Counter[str]()
    url = f"http://{HOST}:{port}{CHAT_PATH}"
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            while time.perf_counter() < deadline and counts["ok"] + counts["error"] < max_requests:
                try:
                    async with session.post(url, data=body, headers=JSON_HEADERS) as resp:
                        await resp.read()
                        counts["ok" if resp.status == 200 else "error"] += 1
                except (asyncio.TimeoutError, aiohttp.ClientError):
                    counts["error"] += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        counts["us"] = int((time.perf_counter() - start) * 1e6)
    return counts


def measure_rps(ports: dict[str, int], plan: Plan, bodies: dict[str, bytes] | None = None) -> dict[str, Any]:
    """Alternating rounds per target; req/s = all ok / all elapsed (and each round's)."""
    bodies = bodies or {}
    totals = {name: Counter[str]() for name in ports}
    rounds: dict[str, list[float]] = {name: [] for name in ports}
    names = list(ports)
    for r in range(plan.rps_rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            one = asyncio.run(rps_round(ports[name], plan.rps_concurrency, plan.rps_seconds,
                                        body=bodies.get(name, CHAT_BODY)))
            rounds[name].append(round(one["ok"] / (one["us"] / 1e6), 1) if one["us"] else 0.0)
            totals[name] += one
    return {
        name: {"ok": t["ok"], "errors": t["error"], "seconds": round(t["us"] / 1e6, 2),
               "rps": round(t["ok"] / (t["us"] / 1e6), 1) if t["us"] else 0.0, "round_rps": rounds[name]}
        for name, t in totals.items()
    }


# -- c. concurrent streams ----------------------------------------------------------


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


async def one_stream(session: aiohttp.ClientSession, url: str, body: bytes, interval: float,
                     expect: int | None, run: StreamRun) -> None:
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


async def run_streams(port: int, n: int, chunks: int, interval_ms: float, think: bool = False,
                      expect_all: bool = True) -> StreamRun:
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


def measure_streams(port: int, upstream: Proc, plan: Plan, n: int, *, think: bool = False, expect_all: bool = True,
                    proxy: Proc | None = None) -> dict[str, Any]:
    """N concurrent streams to `port`, with the CPU the client and the upstream used; through
    a `proxy`, also its peak RSS and its workers' CPU per upstream chunk."""
    workers = children(proxy.pid) if proxy else []
    client0, up0, wk0 = own_cpu_s(), sum(cpu_times([upstream.pid])), cpu_times(workers)
    sampler = RssSampler(proxy.pid) if proxy else None
    with sampler or contextlib.nullcontext():
        run = asyncio.run(run_streams(port, n, plan.chunks, plan.interval_ms, think, expect_all))
    client, up, wk = own_cpu_s() - client0, sum(cpu_times([upstream.pid])) - up0, cpu_times(workers)
    out = run.summary()
    wall = max(run.wall_s, 1e-9)
    out.update(client_core_share=round(client / wall, 2), upstream_core_share=round(up / wall, 2))
    if proxy and sampler:
        user, system = wk[0] - wk0[0], wk[1] - wk0[1]
        upstream_chunks = run.completed * plan.chunks
        out.update(
            peak_rss_mb=round(sampler.peak, 1), rss_samples=sampler.samples,
            worker_cpu_user_s=round(user, 2), worker_cpu_sys_s=round(system, 2),
            cpu_us_per_chunk=round((user + system) / upstream_chunks * 1e6, 1) if upstream_chunks else None,
        )
    return out


# -- orchestration ------------------------------------------------------------------


def warm_up(ports: dict[str, int], plan: Plan, bodies: dict[str, bytes] | None = None, rps_s: float = 1.0,
            streams: bool = True) -> None:
    """Connections, pools and code paths warm on every target before anything is measured."""
    measure_latency(ports, plan.warmup_n, plan.warmup_n, budget_s=60, bodies=bodies)
    for name, port in ports.items():
        asyncio.run(rps_round(port, plan.rps_concurrency, rps_s, body=(bodies or {}).get(name, CHAT_BODY)))
        if streams:
            asyncio.run(run_streams(port, 50, 5, 0.0))


def log_problems(proc: Proc, limit: int = 5) -> dict[str, Any]:
    """Error-looking lines in a proxy log (tracebacks, worker timeouts, ERROR/WARNING records)."""
    pattern = re.compile(r"Traceback|ERROR|CRITICAL|WARNING|WORKER TIMEOUT|Exception|Error:")
    hits = [line for line in proc.log_path.read_text(errors="replace").splitlines() if pattern.search(line)]
    return {"count": len(hits), "first": list(dict.fromkeys(hits))[:limit], "log": str(proc.log_path)}


def machine_info(settings: dict[str, Any], nofile: int) -> dict[str, Any]:
    def version(pkg: str) -> str:
        try:
            return importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            return "?"

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10,
                              check=False).stdout.strip()

    dirty = git("status", "--porcelain", "--", "app", "cot_proxy.py", "gunicorn.conf.py")
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "gunicorn": settings,
        "versions": {p: version(p) for p in ("gunicorn", "gevent", "flask", "requests", "urllib3", "aiohttp")},
        "git": (git("rev-parse", "--short", "HEAD") or "not a git checkout") + ("+dirty" if dirty else ""),
        "nofile": nofile,
    }


def verdict(key: str, value: float | None, streams: int) -> tuple[str, str]:
    """(target text, 'met' | 'MISSED' | 'n/a') for one figure."""
    op, bound = TARGETS[key]
    limit = float(streams) if bound is None else bound
    text = f"{op} {limit:g}"
    if value is None:
        return text, "n/a"
    ok = {"<=": value <= limit, ">=": value >= limit, "==": value == limit}[op]
    return text, "met" if ok else "MISSED"


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))


def summarize(res: dict[str, Any], n_streams: int) -> dict[str, Any]:
    """Headline figures, the target verdicts, and the table rows."""
    lat, rps, idle = res["latency"], res["rps"], res["idle_rss_mb"]
    sd, sp = res["streams"]["direct"], res["streams"]["proxy"]
    head = {
        "added_p50_ms": diff(lat["proxy"]["p50_ms"], lat["direct"]["p50_ms"]),
        "added_p99_ms": diff(lat["proxy"]["p99_ms"], lat["direct"]["p99_ms"]),
        "rps_ratio": round(rps["proxy"]["rps"] / rps["direct"]["rps"], 3) if rps["direct"]["rps"] else None,
        "streams_completed": sp["completed"],
        "extra_gap_p99_ms": diff(sp["gap_p99_ms"], sd["gap_p99_ms"]),
        "idle_rss_mb": idle,
        "peak_rss_mb": sp.get("peak_rss_mb"),
        "ttfc_p50_ms": sp["ttfc_p50_ms"],
        "cpu_us_per_chunk": sp.get("cpu_us_per_chunk"),
    }
    verdicts = {k: verdict(k, head[k], n_streams) for k in TARGETS}

    def row(label: str, d: Any, p: Any, delta: Any = None, key: str | None = None) -> tuple[str, ...]:
        target, status = verdicts[key] if key else ("", "")
        return (label, fmt(d), fmt(p), fmt(delta), target, status)

    rows = [
        ("figure", "direct", "proxy", "proxy-direct", "target", ""),
        row("latency p50 c=1 (ms)", lat["direct"]["p50_ms"], lat["proxy"]["p50_ms"], head["added_p50_ms"],
            "added_p50_ms"),
        row("latency p99 c=1 (ms)", lat["direct"]["p99_ms"], lat["proxy"]["p99_ms"], head["added_p99_ms"]),
        row("req/s c=32 (delta: ratio)", rps["direct"]["rps"], rps["proxy"]["rps"], head["rps_ratio"], "rps_ratio"),
        row(f"streams completed (of {n_streams})", sd["completed"], sp["completed"], None, "streams_completed"),
        row("stream errors", sd["errors"], sp["errors"]),
        row("TTFC p50 (ms)", sd["ttfc_p50_ms"], sp["ttfc_p50_ms"], diff(sp["ttfc_p50_ms"], sd["ttfc_p50_ms"])),
        row("TTFC p99 (ms)", sd["ttfc_p99_ms"], sp["ttfc_p99_ms"], diff(sp["ttfc_p99_ms"], sd["ttfc_p99_ms"])),
        row("inter-chunk gap p99 (ms)", sd["gap_p99_ms"], sp["gap_p99_ms"], head["extra_gap_p99_ms"],
            "extra_gap_p99_ms"),
        row("gap - 50 ms, p99 (ms)", sd["gap_minus_nominal_p99_ms"], sp["gap_minus_nominal_p99_ms"]),
        row("stream test wall (s)", sd["wall_s"], sp["wall_s"]),
        row("client CPU, share of a core", sd["client_core_share"], sp["client_core_share"]),
        row("upstream CPU, share of a core", sd["upstream_core_share"], sp["upstream_core_share"]),
        row("idle RSS, master+workers (MiB)", None, idle, None, "idle_rss_mb"),
        row("peak RSS during streams (MiB)", None, head["peak_rss_mb"]),
        row("worker CPU per chunk (us)", None, head["cpu_us_per_chunk"]),
    ]
    return {"headline": head, "targets": {k: {"target": t, "status": s} for k, (t, s) in verdicts.items()},
            "rows": rows}


def think_section(upstream: Proc, plan: Plan, n: int, extra_env: dict[str, str], workers: int,
                  procs: list[Proc]) -> dict[str, Any]:
    """The think-heavy stream test: direct, then proxies with THINK_MODE=keep and =strip."""
    out: dict[str, Any] = {"direct": measure_streams(upstream.port, upstream, plan, n, think=True)}
    for mode in ("keep", "strip"):
        proxy = start_proxy(f"proxy-think-{mode}", proxy_env(upstream, {**extra_env, "THINK_MODE": mode}), workers)
        procs.append(proxy)
        try:
            asyncio.run(run_streams(proxy.port, 50, 5, 0.0, think=True, expect_all=False))
            # strip may drop or merge think chunks: completed then only needs [DONE]
            res = measure_streams(proxy.port, upstream, plan, n, think=True, expect_all=(mode == "keep"), proxy=proxy)
            res["extra_gap_minus_nominal_p99_ms"] = diff(res["gap_minus_nominal_p99_ms"],
                                                         out["direct"]["gap_minus_nominal_p99_ms"])
            res["log_problems"] = log_problems(proxy)
            out[mode] = res
        finally:
            proxy.stop()
    return out


def print_think(think: dict[str, Any]) -> None:
    print("\nthink-heavy streams (bench_think: 70% of chunks inside <think>; THINK_MODE per proxy)")
    rows: list[tuple[str, ...]] = [("figure", "direct", "keep", "strip")]
    for label, key in [("completed", "completed"), ("errors", "errors"), ("events received", "events_received"),
                       ("TTFC p50 (ms)", "ttfc_p50_ms"), ("gap - nominal p99 (ms)", "gap_minus_nominal_p99_ms"),
                       ("extra gap p99 vs direct (ms)", "extra_gap_minus_nominal_p99_ms"),
                       ("worker CPU per upstream chunk (us)", "cpu_us_per_chunk"), ("peak RSS (MiB)", "peak_rss_mb")]:
        rows.append((label, *(fmt(think[m].get(key)) for m in ("direct", "keep", "strip"))))
    print_table(rows)


def parse_env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--env {pair!r}: expected KEY=VAL")
        env[key] = value
    return env


def run_all(args: argparse.Namespace, plan: Plan, n_streams: int, extra_env: dict[str, str],
            procs: list[Proc]) -> dict[str, Any]:
    """Start everything, measure a-d (and the think test), return the JSON report."""
    nofile = raise_nofile()
    upstream = start_upstream()
    procs.append(upstream)
    env = proxy_env(upstream, extra_env)
    settings = gunicorn_settings(env)
    info = machine_info(settings, nofile)
    print(f"machine: nproc={info['nproc']} python={info['python']} load={info['loadavg_at_start']} git={info['git']}")
    print(f"gunicorn: worker_class={settings['worker_class']} workers={settings['workers']} "
          f"threads={settings['threads']} worker_connections={settings['worker_connections']}"
          + (f"  env={extra_env}" if extra_env else ""))
    proxy = start_proxy("proxy", env, settings["workers"])
    procs.append(proxy)
    ports = {"direct": upstream.port, "proxy": proxy.port}

    print("warming up ...", flush=True)
    warm_up(ports, plan)
    time.sleep(1.0)
    res: dict[str, Any] = {"idle_rss_mb": round(tree_rss_mb(proxy.pid), 1)}
    print(f"a. latency c=1: {plan.latency_n} sequential POSTs per target ...", flush=True)
    res["latency"] = measure_latency(ports, plan.latency_n, plan.latency_block, plan.latency_budget_s)
    print(f"b. req/s c={plan.rps_concurrency}: {plan.rps_rounds} x {plan.rps_seconds:g} s per target ...", flush=True)
    res["rps"] = measure_rps(ports, plan)
    print(f"c. {n_streams} concurrent streams x {plan.chunks} chunks, {plan.interval_ms:g} ms apart ...", flush=True)
    res["streams"] = {
        "direct": measure_streams(upstream.port, upstream, plan, n_streams),
        "proxy": measure_streams(proxy.port, upstream, plan, n_streams, proxy=proxy),
    }
    res["rss_after_streams_mb"] = round(tree_rss_mb(proxy.pid), 1)
    res["log_problems"] = log_problems(proxy)
    proxy.stop()
    if args.think:
        print(f"think: {n_streams} think-heavy streams, direct / THINK_MODE=keep / =strip ...", flush=True)
        res["think"] = think_section(upstream, plan, n_streams, extra_env, settings["workers"], procs)
    summary = summarize(res, n_streams)
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "argv": sys.argv[1:],
        "plan": {**asdict(plan), "streams": n_streams},
        "proxy_env": extra_env,
        "machine": info,
        "headline": summary["headline"],
        "targets": summary["targets"],
        "rows": summary["rows"],
        "results": res,
    }


def report(rep: dict[str, Any], seconds: float) -> None:
    res = rep["results"]
    print(f"\nsummary (proxy vs direct, same run; {seconds:.0f} s)")
    print_table(rep["rows"])
    if "think" in res:
        print_think(res["think"])
    direct = res["streams"]["direct"]
    if max(direct["client_core_share"], direct["upstream_core_share"]) >= SATURATED:
        print(f"\nnote: during the direct streams the client used {direct['client_core_share']:.0%} and the upstream "
              f"{direct['upstream_core_share']:.0%} of a core: at this stream count TTFC and gaps are bounded by the "
              "load generator too, not only by the proxy (compare with a smaller --streams).")
    problems = res["log_problems"]
    print(f"\nproxy log: {problems['count']} error-looking lines ({problems['log']})")
    for line in problems["first"]:
        print(f"  {line[:200]}")
    met = sum(1 for t in rep["targets"].values() if t["status"] == "met")
    print(f"targets met: {met}/{len(TARGETS)}")


# -- --routing: does routing cost anything on the hot path? -------------------------

ALIAS = "fast"
NAMESPACED = "b/some-model"
ROUTING_VARS = ("TARGET_BASE_URL", "BACKEND_URL", "OLLAMA_BASE_URL", "COT_PROXY_CONFIG", "DEFAULT_PROVIDER",
                "DEFAULT_BACKEND", "GATEWAY_URL")
"""Left out of the parent's environment, so each proxy routes exactly as set up here."""
ROUTE_TARGETS = {  # name -> (column label, model in the body, proxy, expected X-Cot-Proxy-Provider)
    "direct": ("direct", "bench-model", None, None),
    "single": ("single-target", "bench-model", "single", "default/bench-model"),
    "routed_ns": (f"routed {NAMESPACED}", NAMESPACED, "routed", NAMESPACED),
    "routed_alias": (f"routed alias {ALIAS}", ALIAS, "routed", "c/bench-model"),
}
ROUTED = ("routed_ns", "routed_alias")
PROXIED = ("single", *ROUTED)


def free_ports(n: int) -> list[int]:
    """`n` distinct free ports (all bound at once, then released)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind((HOST, 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def routing_config(up: int, up2: int) -> str:
    """Three providers: `a` and `b` on the first fake upstream, `c` with a backend on each,
    balanced by prefix affinity; an alias with a fallback route and one pinned to a provider."""
    u1, u2 = f"http://{HOST}:{up}/v1", f"http://{HOST}:{up2}/v1"
    return f"""\
# written by bench/run.py --routing
providers:
  a: {{type: openai, base_url: "{u1}"}}
  b: {{type: openai, base_url: "{u1}"}}
  c:
    type: openai
    backends:
      - {{base_url: "{u1}"}}
      - {{base_url: "{u2}"}}
    balance: prefix_affinity
models:
  {ALIAS}: {{route: [c/bench-model, a/bench-model]}}
  pinned: {{provider: b, upstream_model: bench-model, params: {{temperature: 0.3}}}}
default_provider: a
"""


def routing_envs(up: Proc, config: Path, extra: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(single-target env, routed env): the parent's environment without routing variables,
    each on its own free port, plus `extra` (which wins)."""
    if (REPO / "config.yaml").exists():
        raise BenchError("config.yaml in the repo root would be read by the single-target proxy too; move it away")
    base = {k: v for k, v in os.environ.items() if k not in ROUTING_VARS}
    single_port, routed_port = free_ports(2)
    single = {**base, "TARGET_BASE_URL": f"http://{HOST}:{up.port}/v1/", "PORT": str(single_port), "HOST": HOST,
              **extra}
    routed = {**base, "COT_PROXY_CONFIG": str(config), "PORT": str(routed_port), "HOST": HOST, **extra}
    return single, routed


def get_json(port: int, path: str) -> Any:
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise BenchError(f"GET {path} on port {port}: HTTP {resp.status}: {data[:200]!r}")
        return orjson.loads(data)
    finally:
        conn.close()


def post_label(port: int, body: bytes) -> tuple[int, str | None]:
    """One chat POST on a fresh connection: (status, X-Cot-Proxy-Provider)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("POST", CHAT_PATH, body, JSON_HEADERS)
        resp = conn.getresponse()
        resp.read()
        return resp.status, resp.getheader("x-cot-proxy-provider")
    finally:
        conn.close()


def check_routing(ports: dict[str, int], bodies: dict[str, bytes], upstreams: list[Proc], workers: int,
                  tries: int = 5) -> dict[str, Any]:
    """Before measuring: the routed proxy's background model-list fetches reached the fake
    upstreams (User-Agent cot-proxy-background), and each proxied target answers 200 from the
    expected provider; which fake upstream served it is read from the upstreams' counters."""
    want = 3 * workers  # every worker lists providers a, b and c once at start
    deadline = time.monotonic() + 15
    while True:
        background = sum(get_json(u.port, "/bench/stats").get("models_background", 0) for u in upstreams)
        if background >= want or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    listed = [m["id"] for m in get_json(ports["routed_ns"], "/v1/models")["data"]]
    out: dict[str, Any] = {"background_model_fetches": background, "background_model_fetches_expected": want,
                           "routed_models_listed": listed, "targets": {}}
    for name in PROXIED:
        before = {u.port: get_json(u.port, "/bench/stats").get("chat", 0) for u in upstreams}
        answers = Counter(post_label(ports[name], bodies[name]) for _ in range(tries))
        after = {u.port: get_json(u.port, "/bench/stats").get("chat", 0) for u in upstreams}
        expected = ROUTE_TARGETS[name][3]
        if answers != Counter({(200, expected): tries}):
            raise BenchError(f"{name}: expected {tries} x HTTP 200 from provider {expected!r}, got "
                             f"{dict(answers)} (see the proxy logs in bench/results/)")
        served = {port: after[port] - before[port] for port in after if after[port] > before[port]}
        out["targets"][name] = {"provider": expected, "served_by_upstream_port": served}
    return out


def median_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float | None, float | None, float | None]:
    """Median of `values` and a distribution-free confidence interval for it (sign test: order
    statistics k and n-k+1, coverage >= `confidence`); (median, None, None) with too few values."""
    d = sorted(values)
    n = len(d)
    if not n:
        return None, None, None
    tail, k, cum = (1 - confidence) / 2, 0, 0.0
    while k < n and cum + math.comb(n, k) / 2**n <= tail:
        cum += math.comb(n, k) / 2**n
        k += 1
    med = round(statistics.median(d), 3)
    return (med, None, None) if k == 0 else (med, round(d[k - 1], 3), round(d[n - k], 3))


def routing_summary(lat: dict[str, Any], rps: dict[str, Any]) -> dict[str, Any]:
    """Added latency over direct, routed minus single (pooled, and paired per block with a CI),
    and the c=32 ratios."""
    def ratio(a: str, b: str) -> float | None:
        return round(rps[a]["rps"] / rps[b]["rps"], 3) if rps[b]["rps"] else None

    head: dict[str, Any] = {}
    for name in PROXIED:
        head[name] = {
            "added_p50_ms": diff(lat[name]["p50_ms"], lat["direct"]["p50_ms"]),
            "added_p99_ms": diff(lat[name]["p99_ms"], lat["direct"]["p99_ms"]),
            "rps_ratio_to_direct": ratio(name, "direct"),
        }
    for name in ROUTED:
        pairs = [a - b for a, b in zip(lat[name]["block_p50_ms"], lat["single"]["block_p50_ms"], strict=True)
                 if a is not None and b is not None]
        med, lo, hi = median_ci(pairs)
        per_round = [round(a / b, 3) for a, b in zip(rps[name]["round_rps"], rps["single"]["round_rps"], strict=True)
                     if b]
        head[name].update(
            minus_single_p50_ms=diff(lat[name]["p50_ms"], lat["single"]["p50_ms"]),
            minus_single_p99_ms=diff(lat[name]["p99_ms"], lat["single"]["p99_ms"]),
            minus_single_block_p50_median_ms=med, minus_single_block_p50_ci95_ms=[lo, hi], blocks=len(pairs),
            rps_ratio_to_single=ratio(name, "single"), rps_ratio_to_single_per_round=per_round,
        )
    return head


def ci_text(med: float | None, lo: float | None, hi: float | None) -> str:
    if med is None:
        return "-"
    return f"{med:+.2f} [{lo:+.2f}, {hi:+.2f}]" if lo is not None and hi is not None else f"{med:+.2f} [-]"


def span(values: Sequence[float]) -> str:
    return f"{min(values):.2f} - {max(values):.2f}" if values else "-"


def routing_rows(lat: dict[str, Any], rps: dict[str, Any], head: dict[str, Any]) -> list[tuple[str, ...]]:
    names = list(ROUTE_TARGETS)

    def row(label: str, get: Any) -> tuple[str, ...]:
        return (label, *(get(n) for n in names))

    def h(key: str, only: tuple[str, ...] = PROXIED) -> Any:
        return lambda n: fmt(head[n][key]) if n in only else "-"

    return [
        ("figure", *(ROUTE_TARGETS[n][0] for n in names)),
        row("latency p50 c=1 (ms)", lambda n: fmt(lat[n]["p50_ms"])),
        row("latency p99 c=1 (ms)", lambda n: fmt(lat[n]["p99_ms"])),
        row("added p50 vs direct (ms)", h("added_p50_ms")),
        row("added p99 vs direct (ms)", h("added_p99_ms")),
        row("routed - single, p50 (ms)", h("minus_single_p50_ms", ROUTED)),
        row("routed - single, p99 (ms)", h("minus_single_p99_ms", ROUTED)),
        row("routed - single, block p50s: median [95% CI]",
            lambda n: ci_text(head[n]["minus_single_block_p50_median_ms"], *head[n]["minus_single_block_p50_ci95_ms"])
            if n in ROUTED else "-"),
        row("req/s c=32", lambda n: fmt(rps[n]["rps"])),
        row("req/s errors c=32", lambda n: fmt(rps[n]["errors"])),
        row("ratio to direct c=32", h("rps_ratio_to_direct")),
        row("ratio routed / single c=32", h("rps_ratio_to_single", ROUTED)),
        row("  same, per round: min - max", lambda n: span(head[n]["rps_ratio_to_single_per_round"]) if n in ROUTED
            else "-"),
    ]


def run_routing(plan: Plan, extra_env: dict[str, str], procs: list[Proc], tmp: Path) -> dict[str, Any]:
    """Two fake upstreams, a single-target and a routed proxy side by side; latency and req/s of
    direct, single, routed `b/some-model` and routed alias, in the same interleaved runs."""
    nofile = raise_nofile()
    up = start_upstream("upstream")
    procs.append(up)
    up2 = start_upstream("upstream-2")
    procs.append(up2)
    config = tmp / "routing.yaml"
    config.write_text(routing_config(up.port, up2.port))
    single_env, routed_env = routing_envs(up, config, extra_env)
    settings = gunicorn_settings(single_env)
    info = machine_info(settings, nofile)
    print(f"machine: nproc={info['nproc']} python={info['python']} load={info['loadavg_at_start']} git={info['git']}")
    print(f"gunicorn (each proxy): worker_class={settings['worker_class']} workers={settings['workers']} "
          f"worker_connections={settings['worker_connections']}" + (f"  env={extra_env}" if extra_env else ""))
    proxies = {"single": launch_proxy("proxy-single", single_env)}
    procs.append(proxies["single"])
    proxies["routed"] = launch_proxy("proxy-routed", routed_env)
    procs.append(proxies["routed"])
    for proxy in proxies.values():
        proxy.wait_ready("/healthz", 60, settings["workers"])
    ports = {n: up.port if proxy is None else proxies[proxy].port for n, (_, _, proxy, _) in ROUTE_TARGETS.items()}
    bodies = {n: chat_body(model=model) for n, (_, model, _, _) in ROUTE_TARGETS.items()}

    checks = check_routing(ports, bodies, [up, up2], settings["workers"])
    print("warming up ...", flush=True)
    warm_up(ports, plan, bodies, rps_s=0.5, streams=False)
    time.sleep(0.5)
    res: dict[str, Any] = {"idle_rss_mb": {n: round(tree_rss_mb(p.pid), 1) for n, p in proxies.items()}}
    print(f"a. latency c=1: up to {plan.latency_n} sequential POSTs per target (at most ~{plan.latency_budget_s:g} s), "
          f"blocks of {plan.latency_block} interleaved over {', '.join(ports)} ...", flush=True)
    res["latency"] = measure_latency(ports, plan.latency_n, plan.latency_block, plan.latency_budget_s, bodies)
    print(f"b. req/s c={plan.rps_concurrency}: {plan.rps_rounds} x {plan.rps_seconds:g} s per target ...", flush=True)
    res["rps"] = measure_rps(ports, plan, bodies)
    res["log_problems"] = {n: log_problems(p) for n, p in proxies.items()}
    head = routing_summary(res["latency"], res["rps"])
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "argv": sys.argv[1:],
        "mode": "routing",
        "plan": {k: v for k, v in asdict(plan).items() if k not in ("streams", "chunks", "interval_ms")},
        "proxy_env": extra_env,
        "machine": info,
        "upstream_ports": [up.port, up2.port],
        "routing_config": config.read_text(),
        "targets": {n: {"label": label, "model": model, "proxy": proxy, "provider": provider}
                    for n, (label, model, proxy, provider) in ROUTE_TARGETS.items()},
        "checks": checks,
        "headline": head,
        "rows": routing_rows(res["latency"], res["rps"], head),
        "results": res,
    }


def report_routing(rep: dict[str, Any], seconds: float) -> None:
    res, head, checks = rep["results"], rep["headline"], rep["checks"]
    up1, up2 = rep["upstream_ports"]
    n_blocks = head["routed_ns"]["blocks"]
    print(f"\nrouting on the hot path (direct vs single-target vs routed proxy, same run; {seconds:.0f} s)")
    print_table(rep["rows"])
    print(f"\nCI: per block, routed p50 - single p50 ({n_blocks} blocks), median and its 95% sign-test interval.")
    for name in ROUTED:
        med = head[name]["minus_single_block_p50_median_ms"]
        lo, hi = head[name]["minus_single_block_p50_ci95_ms"]
        if lo is None or hi is None:
            verdict_text = "too few blocks for an interval"
        elif lo > 0:
            verdict_text = f"routing adds {med:.2f} ms (interval above 0)"
        elif hi < 0:
            verdict_text = f"routed is {-med:.2f} ms faster (interval below 0)"
        else:
            verdict_text = "no difference measurable at this sample size (interval includes 0)"
        print(f"  {ROUTE_TARGETS[name][0]}: {verdict_text}")
    names = {up1: f"upstream :{up1}", up2: f"upstream-2 :{up2}"}
    served = "; ".join(
        f"{ROUTE_TARGETS[n][0]} -> {t['provider']} @ "
        + ", ".join(f"{names.get(int(p), p)} x{c}" for p, c in t["served_by_upstream_port"].items())
        for n, t in checks["targets"].items()
    )
    print(f"\nchecks: {served}")
    print(f"  background model-list fetches seen by the upstreams (User-Agent cot-proxy-background): "
          f"{checks['background_model_fetches']} (>= {checks['background_model_fetches_expected']} expected); "
          f"routed /v1/models lists {len(checks['routed_models_listed'])} ids")
    print(f"  idle RSS, master+workers (MiB): single {res['idle_rss_mb']['single']}, "
          f"routed {res['idle_rss_mb']['routed']}")
    for name, problems in res["log_problems"].items():
        print(f"proxy log ({name}): {problems['count']} error-looking lines ({problems['log']})")
        for line in problems["first"]:
            print(f"  {line[:200]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller counts (~30 s smoke run)")
    parser.add_argument("--streams", type=int, help="concurrent streams (default 1000, quick 200)")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VAL", help="proxy environment (repeatable)")
    parser.add_argument("--think", action="store_true", help="also the think-heavy stream test, THINK_MODE keep/strip")
    parser.add_argument("--routing", action="store_true",
                        help="instead: single-target vs routed proxy (three providers), latency and req/s (~50 s)")
    args = parser.parse_args()
    if args.routing and (args.think or args.streams is not None):
        parser.error("--routing measures latency and req/s only: no --think or --streams")
    if args.routing:
        plan = ROUTING_QUICK if args.quick else ROUTING
    else:
        plan = QUICK if args.quick else FULL
    n_streams = args.streams if args.streams is not None else plan.streams
    if not args.routing and not 1 <= n_streams <= 10_000:
        raise SystemExit("--streams must be within 1..10000")
    extra_env = parse_env(args.env)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `finally` stops the children
    RESULTS.mkdir(parents=True, exist_ok=True)
    procs: list[Proc] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="cot-proxy-bench-") as tmp:
        try:
            if args.routing:
                rep = run_routing(plan, extra_env, procs, Path(tmp))
            else:
                rep = run_all(args, plan, n_streams, extra_env, procs)
        except BenchError as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return 1
        finally:
            for proc in reversed(procs):
                proc.stop()
    if args.routing:
        report_routing(rep, time.monotonic() - started)
        out = RESULTS / "latest-routing.json"
    else:
        report(rep, time.monotonic() - started)
        out = RESULTS / "latest.json"
    out.write_text(json.dumps(rep, indent=2) + "\n")
    print(f"wrote {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

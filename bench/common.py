"""What the benchmarks share: the fake upstream, the naive relay, nginx and the proxy as child processes,
/proc readings (RSS, CPU), percentiles, the c=1 and c=32 Python clients, and the result table.

The proxy runs under bench/harness.py's `Gunicorn` (the test suite's harness too); the other servers are
`Proc`s: each in its own process group, its output in bench/results/<name>.log, stopped in `finally`.
Standard library plus aiohttp and orjson (requirements-dev.txt).
"""

from __future__ import annotations

import asyncio
import compileall
import contextlib
import http.client
import importlib.metadata
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import COMMAND, ISOLATED, Gunicorn, children, free_port  # noqa: E402, F401 - re-exported

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
RESULTS = BENCH / "results"
HOST = "127.0.0.1"
CHAT_PATH = "/v1/chat/completions"
JSON_HEADERS = {"content-type": "application/json", "authorization": "Bearer bench"}
CLK_TCK = os.sysconf("SC_CLK_TCK")
NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx", "/usr/bin/nginx") if Path(p).exists()), None)
WORKERS = 2
"""Gunicorn workers of the proxy and of the naive relay (nginx gets as many worker processes)."""


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
    """Sizes of the Python-client request tests (bench/routing_latency.py)."""

    latency_n: int  # sequential requests per target
    latency_block: int  # requests per block; blocks alternate between targets (ABBA)
    rps_seconds: float  # per round and target
    rps_rounds: int
    rps_concurrency: int
    warmup_n: int
    latency_budget_s: float = 180.0  # the latency test stops after the first round of blocks past this


# -- processes ----------------------------------------------------------------


def raise_nofile() -> int:
    """Raise RLIMIT_NOFILE to the hard limit; children inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Proc:
    """A server child (not the proxy: that is `harness.Gunicorn`) on `port`, in its own process group,
    output in bench/results/<name>.log; `stop()` ends it and anything it left."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], port: int, cwd: Path = REPO) -> None:
        self.name = name
        self.port = port
        self.log_path = RESULTS / f"{name}.log"
        RESULTS.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait_ready(self, path: str, timeout: float, workers: int = 0) -> None:
        """Poll `path` until 200 (and until `workers` children run); bounded."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise BenchError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            if http_ok(self.port, path) and len(children(self.proc.pid)) >= workers:
                return
            time.sleep(0.1)  # polling for start-up
        raise BenchError(f"{self.name} not ready on port {self.port} within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the group we created: leftovers only
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        self._log.close()


Server = Proc | Gunicorn
"""Anything `measure_*` and the /proc readings take: both have `.proc` (the Popen), `.port`, `.log_path`."""


def http_ok(port: int, path: str) -> bool:
    conn = http.client.HTTPConnection(HOST, port, timeout=2)
    try:
        conn.request("GET", path)
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def started(proc: Proc, path: str, timeout: float, workers: int = 0) -> Proc:
    """`proc` once ready; stopped if it never gets there."""
    try:
        proc.wait_ready(path, timeout, workers)
    except BaseException:
        proc.stop()
        raise
    return proc


def start_upstream(name: str = "upstream") -> Proc:
    """bench/fake_upstream.py on a free port, ready."""
    port = free_port()
    argv = [sys.executable, str(BENCH / "fake_upstream.py"), "--port", str(port)]
    return started(Proc(name, argv, dict(os.environ), port), "/v1/models", 20)


def start_naive(upstream: Proc, name: str = "naive", workers: int = WORKERS) -> Proc:
    """bench/naive_relay.py (a 30-line Flask + requests relay) under stock Gunicorn with the proxy's worker
    settings (gevent, 2 workers, connections): before, Gunicorn read the repository's gunicorn.conf.py from
    the working directory, so the naive relay ran cot-proxy's hooks (head coalescing, fair accept, worker
    recycling that spoilt its CPU figures)."""
    compiled(REPO)
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        os.devnull,  # stock Gunicorn: not ./gunicorn.conf.py (cot-proxy's hooks, recycling, logging)
        "-k",
        "gevent",
        "-w",
        str(workers),
        "-b",
        f"{HOST}:{port}",
        "--worker-connections",
        "10000",
        "--chdir",
        str(BENCH),
        "naive_relay:app",
    ]
    env = {**os.environ, "NAIVE_UPSTREAM": f"http://{HOST}:{upstream.port}/v1"}
    return started(Proc(name, argv, env, port), "/v1/models", 60, workers)


NGINX_CONF = """\
worker_processes {workers};
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
worker_rlimit_nofile 65536;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    upstream fake {{ server {host}:{upstream}; keepalive 128; }}
    server {{
        listen {host}:{port} backlog=4096;
        location / {{
            proxy_pass http://fake;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 300s;
        }}
    }}
}}
"""


def start_nginx(upstream: Proc, tmp: Path, name: str = "nginx", workers: int = WORKERS) -> Proc | None:
    """nginx proxying to the fake upstream (keep-alive pool, unbuffered for SSE), or None without nginx."""
    if NGINX is None:
        return None
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(workers=workers, tmp=tmp, host=HOST, upstream=upstream.port, port=port))
    argv = [NGINX, "-p", str(tmp), "-c", str(conf)]
    return started(Proc(name, argv, dict(os.environ), port), "/v1/models", 20, workers)


def proxy_env(upstream: Proc, extra: dict[str, str]) -> dict[str, str]:
    """The proxy pointed at the fake upstream, plus `extra` (harness.Gunicorn adds the parent's environment).

    Worker recycling (GUNICORN_MAX_REQUESTS, 10,000 by default) is off, as in the naive relay: a worker
    replaced mid-run would take its CPU time with it and spoil the per-request figures."""
    return {"TARGET_BASE_URL": f"http://{HOST}:{upstream.port}/v1/", "GUNICORN_MAX_REQUESTS": "0", **extra}


def gunicorn_settings(env: dict[str, str]) -> dict[str, Any]:
    """Worker class, workers and threads as gunicorn.conf.py resolves them under `env`."""
    code = (
        "import json, runpy; c = runpy.run_path('gunicorn.conf.py'); "
        "print(json.dumps({k: c.get(k) for k in ('worker_class', 'workers', 'threads', 'worker_connections')}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if out.returncode != 0:
        raise BenchError(f"gunicorn.conf.py does not load:\n{(out.stderr or out.stdout).strip()}")
    return dict(json.loads(out.stdout))


def compiled(root: Path) -> None:
    """The bytecode of `root`'s app/ (and the naive relay) written, as pip and the Dockerfile leave an install.
    Under PYTHONDONTWRITEBYTECODE=1 (set on these machines) each worker would compile app/ from source at
    every boot instead: slower to start and about 2.5 MiB more RSS per worker, which is not what runs."""
    for where in (root / "app", BENCH):
        compileall.compile_dir(str(where), quiet=1)


def start_proxy(name: str, env: dict[str, str], workers: int = WORKERS, wait: bool = True) -> Gunicorn:
    """cot-proxy under Gunicorn (bench/harness.py), output in bench/results/<name>.log; with `wait`, once
    every worker answers. Stop it with `.stop()`."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    compiled(REPO)
    try:
        return Gunicorn(env, log_path=RESULTS / f"{name}.log", workers=workers, wait=wait)
    except RuntimeError as exc:
        raise BenchError(f"{name}: {exc}") from None


def start_proxy_at(root: Path, name: str, env: dict[str, str], workers: int = WORKERS) -> Proc:
    """cot-proxy from another checkout (a `git worktree` of an older commit: before/after in one run), with
    the environment `harness.Gunicorn` gives (which runs this checkout only)."""
    compiled(root)
    port = free_port()
    full = {k: v for k, v in os.environ.items() if k not in ISOLATED}
    full.update({"HOST": HOST, "PORT": str(port), "WEB_CONCURRENCY": str(workers), **env})
    return started(Proc(name, [sys.executable, *COMMAND], full, port, cwd=root), "/livez", 60, workers)


@contextlib.contextmanager
def worktree(commit: str | None, path: Path) -> Iterator[str | None]:
    """A detached `git worktree` of `commit` at `path` while the block runs (nothing without a commit);
    yields the short commit id."""
    if commit is None:
        yield None
        return
    if path.exists():
        raise BenchError(f"{path} exists; remove it (git worktree remove --force {path})")
    short = git("rev-parse", "--short", commit + "^{commit}")
    git("worktree", "add", "--detach", str(path), short)
    try:
        yield short
    finally:
        try:
            git("worktree", "remove", "--force", str(path))
        except BenchError as exc:
            print(f"warning: {exc}", file=sys.stderr)


def git(*argv: str) -> str:
    out = subprocess.run(["git", *argv], cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    if out.returncode != 0:
        raise BenchError(f"git {' '.join(argv)}: {out.stderr.strip()}")
    return out.stdout.strip()


def app_label() -> str:
    """This checkout's commit, `+dirty` when the app's files have uncommitted changes (they are what runs)."""
    dirty = git("status", "--porcelain", "--", "app", "cot_proxy.py", "gunicorn.conf.py")
    return git("rev-parse", "--short", "HEAD") + ("+dirty" if dirty else "")


# -- /proc ----------------------------------------------------------------------


def _kb(pid: int, file: str, field: str) -> int:
    """A `field: N kB` line of /proc/<pid>/<file> (0 once the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_kb(pid: int) -> int:
    return _kb(pid, "status", "VmRSS:")


def pss_kb(pid: int) -> int:
    """Proportional set size: each shared page split between the processes that map it."""
    return _kb(pid, "smaps_rollup", "Pss:")


def tree_mb(master: int, kb: Callable[[int], int] = rss_kb) -> float:
    """RSS (or with `pss_kb`, PSS: RSS counts a page the master shares with its workers once per process)
    of the Gunicorn master plus its workers, MiB."""
    return (kb(master) + sum(kb(c) for c in children(master))) / 1024


def tree_rss_mb(master: int) -> float:
    return tree_mb(master)


def tree_pss_mb(master: int) -> float:
    return tree_mb(master, pss_kb)


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


# -- requests from Python: c=1 and c=32 ----------------------------------------


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


def measure_latency(
    ports: dict[str, int], n: int, block: int, budget_s: float = 180.0, bodies: dict[str, bytes] | None = None
) -> dict[str, Any]:
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
        name: {
            "n": len(values),
            "p50_ms": ms(pct(values, 50)),
            "p99_ms": ms(pct(values, 99)),
            "mean_ms": ms(sum(values) / len(values)),
            "reconnects": clients[name].reconnects,
            "block_p50_ms": blocks[name],
        }
        for name, values in samples.items()
    }


# -- b. req/s at c=32 ------------------------------------------------------------


async def rps_round(
    port: int, concurrency: int, seconds: float, max_requests: int = 2_000_000, body: bytes = CHAT_BODY
) -> Counter[str]:
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
            one = asyncio.run(
                rps_round(ports[name], plan.rps_concurrency, plan.rps_seconds, body=bodies.get(name, CHAT_BODY))
            )
            rounds[name].append(round(one["ok"] / (one["us"] / 1e6), 1) if one["us"] else 0.0)
            totals[name] += one
    return {
        name: {
            "ok": t["ok"],
            "errors": t["error"],
            "seconds": round(t["us"] / 1e6, 2),
            "rps": round(t["ok"] / (t["us"] / 1e6), 1) if t["us"] else 0.0,
            "round_rps": rounds[name],
        }
        for name, t in totals.items()
    }


# -- reporting ---------------------------------------------------------------------


def warm_up(ports: dict[str, int], plan: Plan, bodies: dict[str, bytes] | None = None, rps_s: float = 1.0) -> None:
    """Connections, pools and code paths warm on every target before anything is measured."""
    measure_latency(ports, plan.warmup_n, plan.warmup_n, budget_s=60, bodies=bodies)
    for name, port in ports.items():
        asyncio.run(rps_round(port, plan.rps_concurrency, rps_s, body=(bodies or {}).get(name, CHAT_BODY)))


def log_problems(proc: Server, limit: int = 5) -> dict[str, Any]:
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
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10, check=False
        ).stdout.strip()

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


def parse_env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--env {pair!r}: expected KEY=VAL")
        env[key] = value
    return env


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


def loadavg() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def write_json(name: str, report: dict[str, Any]) -> Path:
    """bench/results/<name> (git-ignored)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / name
    out.write_text(json.dumps(report, indent=2) + "\n")
    return out


def on_sigterm_exit() -> None:
    """SIGTERM raises SystemExit, so the callers' `finally` blocks stop every child."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

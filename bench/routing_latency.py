"""Does routing cost latency on the hot path? A single-target and a routed cot-proxy side by side, one run.

    python bench/routing_latency.py            # under ~60 s
    python bench/routing_latency.py --quick    # smoke run, about 20 s
    python bench/routing_latency.py --env KEY=VAL   # for both proxies

Two fake upstreams, and two proxies under Gunicorn at the same time: single-target (TARGET_BASE_URL) and
routed (a three-provider COT_PROXY_CONFIG: `a`, `b` on the first upstream, `c` with a backend on each,
prefix affinity; aliases `fast` with a fallback route and `pinned`). c=1 latency (sequential POSTs on one
kept-alive connection, blocks interleaved ABBA, a sign-test interval for routed - single per block) and
c=32 req/s (aiohttp) of direct, single, routed `b/some-model` and routed alias `fast`. Both clients are
Python: absolute added latency is wrk's (bench/wrk_compare.py); this compares proxies with each other.
JSON: bench/results/latest-routing.json.
"""

from __future__ import annotations

import argparse
import http.client
import math
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    CHAT_PATH,
    HOST,
    ISOLATED,
    JSON_HEADERS,
    REPO,
    BenchError,
    Plan,
    Proc,
    Server,
    chat_body,
    diff,
    fmt,
    gunicorn_settings,
    log_problems,
    machine_info,
    measure_latency,
    measure_rps,
    on_sigterm_exit,
    parse_env,
    print_table,
    raise_nofile,
    start_proxy,
    start_upstream,
    tree_rss_mb,
    warm_up,
    write_json,
)

# Small blocks give many paired blocks for the routed-minus-single interval; the time budget keeps a loaded
# box under ~60 s.
ROUTING = Plan(2000, 40, 1.25, 4, 32, 100, latency_budget_s=22.0)
ROUTING_QUICK = Plan(300, 25, 0.75, 2, 32, 100, latency_budget_s=8.0)


ALIAS = "fast"
NAMESPACED = "b/some-model"
ROUTING_VARS = (
    "TARGET_BASE_URL",
    "BACKEND_URL",
    "OLLAMA_BASE_URL",
    "COT_PROXY_CONFIG",
    "DEFAULT_PROVIDER",
    "DEFAULT_BACKEND",
    "GATEWAY_URL",
)
"""Left out of the parent's environment, so each proxy routes exactly as set up here."""
ROUTE_TARGETS = {  # name -> (column label, model in the body, proxy, expected X-Cot-Proxy-Provider)
    "direct": ("direct", "bench-model", None, None),
    "single": ("single-target", "bench-model", "single", "default/bench-model"),
    "routed_ns": (f"routed {NAMESPACED}", NAMESPACED, "routed", NAMESPACED),
    "routed_alias": (f"routed alias {ALIAS}", ALIAS, "routed", "c/bench-model"),
}
ROUTED = ("routed_ns", "routed_alias")
PROXIED = ("single", *ROUTED)


def routing_config(up: int, up2: int) -> str:
    """Three providers: `a` and `b` on the first fake upstream, `c` with a backend on each,
    balanced by prefix affinity; an alias with a fallback route and one pinned to a provider."""
    u1, u2 = f"http://{HOST}:{up}/v1", f"http://{HOST}:{up2}/v1"
    return f"""\
# written by bench/routing_latency.py
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
    """(single-target env, routed env), plus `extra` (which wins). harness.Gunicorn leaves out most routing
    variables of the parent's environment; a set DEFAULT_PROVIDER or DEFAULT_BACKEND stops the run."""
    if (REPO / "config.yaml").exists():
        raise BenchError("config.yaml in the repo root would be read by the single-target proxy too; move it away")
    leaking = [k for k in ROUTING_VARS if k not in ISOLATED and os.environ.get(k)]
    if leaking:
        raise BenchError(f"unset {', '.join(leaking)}: the proxies must route only as set up here")
    return ({"TARGET_BASE_URL": f"http://{HOST}:{up.port}/v1/", **extra}, {"COT_PROXY_CONFIG": str(config), **extra})


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


def check_routing(
    ports: dict[str, int], bodies: dict[str, bytes], upstreams: list[Proc], workers: int, tries: int = 5
) -> dict[str, Any]:
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
    out: dict[str, Any] = {
        "background_model_fetches": background,
        "background_model_fetches_expected": want,
        "routed_models_listed": listed,
        "targets": {},
    }
    for name in PROXIED:
        before = {u.port: get_json(u.port, "/bench/stats").get("chat", 0) for u in upstreams}
        answers = Counter(post_label(ports[name], bodies[name]) for _ in range(tries))
        after = {u.port: get_json(u.port, "/bench/stats").get("chat", 0) for u in upstreams}
        expected = ROUTE_TARGETS[name][3]
        if answers != Counter({(200, expected): tries}):
            raise BenchError(
                f"{name}: expected {tries} x HTTP 200 from provider {expected!r}, got "
                f"{dict(answers)} (see the proxy logs in bench/results/)"
            )
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
        pairs = [
            a - b
            for a, b in zip(lat[name]["block_p50_ms"], lat["single"]["block_p50_ms"], strict=True)
            if a is not None and b is not None
        ]
        med, lo, hi = median_ci(pairs)
        per_round = [
            round(a / b, 3) for a, b in zip(rps[name]["round_rps"], rps["single"]["round_rps"], strict=True) if b
        ]
        head[name].update(
            minus_single_p50_ms=diff(lat[name]["p50_ms"], lat["single"]["p50_ms"]),
            minus_single_p99_ms=diff(lat[name]["p99_ms"], lat["single"]["p99_ms"]),
            minus_single_block_p50_median_ms=med,
            minus_single_block_p50_ci95_ms=[lo, hi],
            blocks=len(pairs),
            rps_ratio_to_single=ratio(name, "single"),
            rps_ratio_to_single_per_round=per_round,
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
        row(
            "routed - single, block p50s: median [95% CI]",
            lambda n: (
                ci_text(head[n]["minus_single_block_p50_median_ms"], *head[n]["minus_single_block_p50_ci95_ms"])
                if n in ROUTED
                else "-"
            ),
        ),
        row("req/s c=32", lambda n: fmt(rps[n]["rps"])),
        row("req/s errors c=32", lambda n: fmt(rps[n]["errors"])),
        row("ratio to direct c=32", h("rps_ratio_to_direct")),
        row("ratio routed / single c=32", h("rps_ratio_to_single", ROUTED)),
        row(
            "  same, per round: min - max",
            lambda n: span(head[n]["rps_ratio_to_single_per_round"]) if n in ROUTED else "-",
        ),
    ]


def run_routing(plan: Plan, extra_env: dict[str, str], procs: list[Server], tmp: Path) -> dict[str, Any]:
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
    print(
        f"gunicorn (each proxy): worker_class={settings['worker_class']} workers={settings['workers']} "
        f"worker_connections={settings['worker_connections']}" + (f"  env={extra_env}" if extra_env else "")
    )
    workers = settings["workers"]
    proxies = {"single": start_proxy("proxy-single", single_env, workers, wait=False)}
    procs.append(proxies["single"])
    proxies["routed"] = start_proxy("proxy-routed", routed_env, workers, wait=False)
    procs.append(proxies["routed"])
    for proxy in proxies.values():
        try:
            proxy.wait_ready(60)
        except RuntimeError as exc:
            raise BenchError(str(exc)) from None
    ports = {n: up.port if proxy is None else proxies[proxy].port for n, (_, _, proxy, _) in ROUTE_TARGETS.items()}
    bodies = {n: chat_body(model=model) for n, (_, model, _, _) in ROUTE_TARGETS.items()}

    checks = check_routing(ports, bodies, [up, up2], settings["workers"])
    print("warming up ...", flush=True)
    warm_up(ports, plan, bodies, rps_s=0.5)
    time.sleep(0.5)
    res: dict[str, Any] = {"idle_rss_mb": {n: round(tree_rss_mb(p.proc.pid), 1) for n, p in proxies.items()}}
    print(
        f"a. latency c=1: up to {plan.latency_n} sequential POSTs per target (at most ~{plan.latency_budget_s:g} s), "
        f"blocks of {plan.latency_block} interleaved over {', '.join(ports)} ...",
        flush=True,
    )
    res["latency"] = measure_latency(ports, plan.latency_n, plan.latency_block, plan.latency_budget_s, bodies)
    print(f"b. req/s c={plan.rps_concurrency}: {plan.rps_rounds} x {plan.rps_seconds:g} s per target ...", flush=True)
    res["rps"] = measure_rps(ports, plan, bodies)
    res["log_problems"] = {n: log_problems(p) for n, p in proxies.items()}
    head = routing_summary(res["latency"], res["rps"])
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "argv": sys.argv[1:],
        "mode": "routing",
        "plan": asdict(plan),
        "proxy_env": extra_env,
        "machine": info,
        "upstream_ports": [up.port, up2.port],
        "routing_config": config.read_text(),
        "targets": {
            n: {"label": label, "model": model, "proxy": proxy, "provider": provider}
            for n, (label, model, proxy, provider) in ROUTE_TARGETS.items()
        },
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
    print(
        f"  background model-list fetches seen by the upstreams (User-Agent cot-proxy-background): "
        f"{checks['background_model_fetches']} (>= {checks['background_model_fetches_expected']} expected); "
        f"routed /v1/models lists {len(checks['routed_models_listed'])} ids"
    )
    print(
        f"  idle RSS, master+workers (MiB): single {res['idle_rss_mb']['single']}, "
        f"routed {res['idle_rss_mb']['routed']}"
    )
    for name, problems in res["log_problems"].items():
        print(f"proxy log ({name}): {problems['count']} error-looking lines ({problems['log']})")
        for line in problems["first"]:
            print(f"  {line[:200]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller counts (~20 s smoke run)")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VAL", help="proxy environment (repeatable)")
    args = parser.parse_args()
    plan = ROUTING_QUICK if args.quick else ROUTING
    extra_env = parse_env(args.env)
    on_sigterm_exit()
    procs: list[Server] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="cot-proxy-bench-") as tmp:
        try:
            rep = run_routing(plan, extra_env, procs, Path(tmp))
        except BenchError as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return 1
        finally:
            for proc in reversed(procs):
                proc.stop()
    report_routing(rep, time.monotonic() - started)
    out = write_json("latest-routing.json", rep)
    print(f"wrote {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

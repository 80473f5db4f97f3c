"""What the Backends, Keys and Config pages show, as plain JSON-ready dicts.

Backends: the router's state is per worker (health, ejections), so each worker publishes
its own view (live.py) and the page merges them with the instance's metrics: a backend is
shown ejected while any worker has it out. Latency per backend and failure reasons are
kept by the console's own transform (live.py); cache-hit rate is the metrics' cached /
prompt tokens where upstreams report `cached_tokens`.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..observability import exposition as names
from .timeseries import quantile

SECRET_NAME = re.compile(r"(token|secret|password|passwd|api_key|apikey|private|credential|authorization)", re.I)
MASK = "***"


# -- backends ----------------------------------------------------------------


def router_state(router: Any) -> dict[str, Any]:
    """This worker's view of every provider's backends (health, load, ejection time left)."""
    now = time.monotonic()
    out: dict[str, Any] = {}
    for name, provider in getattr(router, "providers", {}).items():
        backends = []
        for b in provider.backends:
            backends.append(
                {
                    "url": b.target.public_url,
                    "origin": b.target.origin,
                    "target": b.target.name,
                    "weight": b.weight,
                    "up": b.healthy(now),
                    "in_flight": b.in_flight,
                    "consecutive_failures": b.failures,
                    "failure_threshold": b.failure_threshold,
                    "ejected_for_s": round(max(0.0, b.down_until - now), 1),
                    "probe": {None: "unknown", True: "up", False: "down"}[b.probe_up],
                }
            )
        spec = getattr(provider, "spec", None)
        out[name] = {
            "kind": getattr(provider, "kind", getattr(spec, "type", "openai")),
            "balance": getattr(spec, "balance", None),
            "retries": getattr(provider, "retries", None),
            "backends": backends,
        }
    return out


def _metric_view(families: Iterable[Any]) -> dict[str, Any]:
    """Per provider and backend sums from a scrape of every worker."""
    providers: dict[str, dict[str, Any]] = {}
    backends: dict[tuple[str, str], dict[str, Any]] = {}

    def prov(name: str) -> dict[str, Any]:
        return providers.setdefault(
            name,
            {
                "requests": 0.0,
                "errors_by_kind": {},
                "duration": {},
                "ttfb": {},
                "duration_sum": 0.0,
                "duration_count": 0.0,
            },
        )

    for family in families:
        for s in family.samples:
            name, labels, value = s.name, s.labels, s.value
            if name == names.REQUESTS + "_total":
                prov(labels.get("provider", ""))["requests"] += value
            elif name == names.UPSTREAM_ERRORS + "_total":
                kinds = prov(labels.get("provider", ""))["errors_by_kind"]
                kinds[labels.get("kind", "")] = kinds.get(labels.get("kind", ""), 0.0) + value
            elif name in (names.DURATION + "_bucket", names.TTFB + "_bucket"):
                p = prov(labels.get("provider", ""))
                hist = p["duration"] if name.startswith(names.DURATION) else p["ttfb"]
                le = float(labels.get("le", "inf"))
                hist[le] = hist.get(le, 0.0) + value
            elif name == names.DURATION + "_sum":
                prov(labels.get("provider", ""))["duration_sum"] += value
            elif name == names.DURATION + "_count":
                prov(labels.get("provider", ""))["duration_count"] += value
            elif name == names.BACKEND_UP:
                key = (labels.get("provider", ""), labels.get("backend", ""))
                backends.setdefault(key, {})["up_metric"] = value
            elif name == names.PREFIX_CACHE_TOKENS + "_total":
                key = (labels.get("provider", ""), labels.get("backend", ""))
                entry = backends.setdefault(key, {})
                entry[labels.get("type", "")] = entry.get(labels.get("type", ""), 0.0) + value
    return {"providers": providers, "backends": backends}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def backends_view(snapshots: list[dict[str, Any]], families: Iterable[Any]) -> dict[str, Any]:
    """Every provider and backend over every worker: health, in-flight, ejections and why, latency, cache hits."""
    metrics = _metric_view(families)
    in_flight = _in_flight(snapshots)
    providers = _merged_providers(snapshots)
    _add_backend_stats(snapshots, providers)
    result = []
    for p in providers.values():
        backends = [_finished_backend(entry, metrics, in_flight) for entry in p["backends"].values()]
        # A provider's metrics label is its targets' name.
        m = _provider_metrics(metrics["providers"], {entry["target"] for entry in backends})
        result.append(
            {
                "name": p["name"],
                "kind": p["kind"],
                "balance": p["balance"],
                "backends": backends,
                "requests": int(m["requests"]),
                "upstream_errors": {k: int(v) for k, v in m["errors_by_kind"].items()},
                "latency_avg_ms": _ms(m["duration_sum"] / m["duration_count"]) if m["duration_count"] else None,
                "latency_p50_ms": _ms(quantile(0.5, m["duration"])),
                "latency_p99_ms": _ms(quantile(0.99, m["duration"])),
                "ttfc_p50_ms": _ms(quantile(0.5, m["ttfb"])),
            }
        )
    return {"workers": len(snapshots), "providers": result, "echo_mode": not result}


def _in_flight(snapshots: list[dict[str, Any]]) -> dict[str, int]:
    """Requests in flight per backend origin, over every worker's live requests."""
    in_flight: dict[str, int] = {}
    for snap in snapshots:
        for e in snap.get("live", ()):
            if e.get("backend"):
                in_flight[e["backend"]] = in_flight.get(e["backend"], 0) + 1
    return in_flight


def _merged_providers(snapshots: list[dict[str, Any]]) -> dict[str, Any]:
    """Every worker's router view merged: one entry per provider, one per backend origin (`_merge_backend`)."""
    providers: dict[str, Any] = {}
    for snap in snapshots:
        for pname, p in (snap.get("router") or {}).items():
            out = providers.setdefault(
                pname, {"name": pname, "kind": p.get("kind"), "balance": p.get("balance"), "backends": {}}
            )
            for b in p.get("backends", ()):
                _merge_backend(out["backends"], b)
    return providers


def _merge_backend(backends: dict[str, Any], b: dict[str, Any]) -> None:
    """One worker's view of a backend into the merged one: ejected while any worker has it out, the worst
    failure count and ejection time, `down` if any worker's probe says so."""
    origin = b["origin"]
    entry = backends.setdefault(
        origin,
        {
            "url": b["url"],
            "origin": origin,
            "target": b.get("target"),
            "weight": b.get("weight"),
            "workers": 0,
            "workers_ejected": 0,
            "ejected_for_s": 0.0,
            "consecutive_failures": 0,
            "probe": b.get("probe"),
            "_lat": [],
            "requests": 0,
            "failed": 0,
            "recent_failures": [],
        },
    )
    entry["workers"] += 1
    if not b.get("up", True):
        entry["workers_ejected"] += 1
    entry["ejected_for_s"] = max(entry["ejected_for_s"], b.get("ejected_for_s", 0.0))
    entry["consecutive_failures"] = max(entry["consecutive_failures"], b.get("consecutive_failures", 0))
    if b.get("probe") == "down":
        entry["probe"] = "down"


def _add_backend_stats(snapshots: list[dict[str, Any]], providers: dict[str, Any]) -> None:
    """The console's own per-backend counts (latencies, requests, failures) from every worker, added to each
    provider's entry for that origin."""
    for snap in snapshots:
        for origin, stats in (snap.get("backends") or {}).items():
            for p in providers.values():
                entry = p["backends"].get(origin)
                if entry is None:
                    continue
                entry["_lat"].extend(stats.get("latencies_ms", ()))
                entry["requests"] += stats.get("requests", 0)
                entry["failed"] += stats.get("failed", 0)
                entry["recent_failures"].extend(stats.get("recent_failures", ()))


def _finished_backend(entry: dict[str, Any], metrics: dict[str, Any], in_flight: dict[str, int]) -> dict[str, Any]:
    """A merged backend entry completed in place for the page: health, latency percentiles, cache hits."""
    lat = entry.pop("_lat")
    cache = metrics["backends"].get((entry["target"], entry["origin"]), {})
    prompt, cached = cache.get("prompt", 0.0), cache.get("cached", 0.0)
    entry["recent_failures"] = sorted(entry["recent_failures"], key=lambda f: -f.get("at", 0))[:10]
    entry.update(
        {
            "healthy": entry["workers_ejected"] == 0 and entry["probe"] != "down",
            "in_flight": in_flight.get(entry["origin"], 0),
            "latency_p50_ms": _pct(lat, 0.5),
            "latency_p99_ms": _pct(lat, 0.99),
            "cache_hit_rate": round(cached / prompt, 4) if prompt else None,
            "cached_tokens": int(cached),
            "prompt_tokens_reported": int(prompt),
            "up_metric": cache.get("up_metric"),
        }
    )
    return entry


def _provider_metrics(by_target: dict[str, Any], targets: set[Any]) -> dict[str, Any]:
    """The metric sums (`_metric_view`) of a provider's targets added together."""
    m: dict[str, Any] = {
        "requests": 0.0,
        "errors_by_kind": {},
        "duration": {},
        "ttfb": {},
        "duration_sum": 0.0,
        "duration_count": 0.0,
    }
    for t in targets:
        pm = by_target.get(t)
        if pm is None:
            continue
        m["requests"] += pm["requests"]
        for k, v in pm["errors_by_kind"].items():
            m["errors_by_kind"][k] = m["errors_by_kind"].get(k, 0.0) + v
        for hist in ("duration", "ttfb"):
            for le, v in pm[hist].items():
                m[hist][le] = m[hist].get(le, 0.0) + v
        m["duration_sum"] += pm["duration_sum"]
        m["duration_count"] += pm["duration_count"]
    return m


# -- configuration ------------------------------------------------------------


def mask_url(url: str) -> str:
    """A URL without its password and with every query value masked (tokens travel there too)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    netloc = parts.netloc
    if parts.password is not None:
        netloc = netloc.replace(":" + parts.password + "@", ":" + MASK + "@", 1)
    query = (
        "&".join(f"{q.split('=', 1)[0]}={MASK}" if "=" in q else q for q in parts.query.split("&"))
        if parts.query
        else ""
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def masked(value: Any, *, depth: int = 0, secret: bool = False) -> Any:
    """A JSON-ready copy of a configuration value, every secret replaced by `***` (None stays None)."""
    if depth > 12:
        return "…"
    if secret:
        return None if value in (None, "", (), []) else MASK
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {}
        for f in dataclasses.fields(value):
            if f.name.startswith("_"):
                continue
            hidden = not f.repr or bool(SECRET_NAME.search(f.name))
            out[f.name] = masked(getattr(value, f.name), depth=depth + 1, secret=hidden)
        return out
    if isinstance(value, dict):
        return {str(k): masked(v, depth=depth + 1, secret=bool(SECRET_NAME.search(str(k)))) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [masked(v, depth=depth + 1) for v in value]
    if isinstance(value, str):
        return mask_url(value) if "://" in value else value
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return str(value)


def config_view(config: Any) -> dict[str, Any]:
    return masked(config)


def routing_view(config: Any) -> dict[str, Any]:
    """The effective routing (from the config file or the environment's single provider), masked."""
    return masked(config.routing_settings)

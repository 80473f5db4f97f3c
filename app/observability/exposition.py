"""Reading the metrics: Prometheus text, the JSON summary, and the metrics-only listener.

Imports only `prometheus_client` and the standard library, never the app:
gunicorn.conf.py loads it in the master for the `OBSERVABILITY_PORT` listener.

In multiprocess mode (`PROMETHEUS_MULTIPROC_DIR`, as under Gunicorn) every
worker writes its own files and a scrape reads them all through a fresh
`MultiProcessCollector`, so any process (a worker or the master) answers with
the sum over every worker, the dead ones' counters included.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, values
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector

from ..clientip import Networks, client_address

# Metric names (the `_total` suffix is added by prometheus_client for counters).
REQUESTS = "cot_proxy_requests"
REQUEST_ERRORS = "cot_proxy_request_errors"
DURATION = "cot_proxy_request_duration_seconds"
TTFB = "cot_proxy_time_to_first_byte_seconds"
UPSTREAM_ERRORS = "cot_proxy_upstream_errors"
TOKENS = "cot_proxy_tokens"
REQUESTS_IN_FLIGHT = "cot_proxy_requests_in_flight"
STREAMS_IN_FLIGHT = "cot_proxy_streams_in_flight"
THINK_BLOCKS = "cot_proxy_think_blocks_stripped"
THINK_PREFILL_LEARNED = "cot_proxy_think_prefill_learned"
FALLBACKS = "cot_proxy_fallbacks"
RATE_LIMITED = "cot_proxy_rate_limited"
BACKEND_UP = "cot_proxy_backend_up"
PREFIX_CACHE_TOKENS = "cot_proxy_prefix_cache_tokens"
SINK_DROPPED = "cot_proxy_completion_sink_dropped"
SINK_ERRORS = "cot_proxy_completion_sink_errors"

JSON_TYPE = "application/json"


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir") or None


def multiprocess_values() -> bool:
    """Whether this process's metric values live in the multiprocess files."""
    return values.ValueClass is not values.MutexValue


def scrape_registry(local: CollectorRegistry | None) -> CollectorRegistry:
    """What a scrape reads: every worker's files in multiprocess mode, else `local`."""
    if local is None or multiprocess_values():
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return registry
    return local


def wants_json(accept: str, query: str = "") -> bool:
    """JSON when asked by `?format=json`, or when the Accept header names application/json
    with a quality no lower than any Prometheus text type it names (`*/*` prefers nothing)."""
    fmt = parse_qs(query).get("format")
    if fmt:
        return fmt[-1].lower() == "json"
    best_json, best_text = 0.0, 0.0
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        media = media.lower()
        if media == JSON_TYPE:
            best_json = max(best_json, q)
        elif media in ("text/plain", "application/openmetrics-text"):
            best_text = max(best_text, q)
    return best_json > 0 and best_json >= best_text


def _model_entry() -> dict[str, float]:
    return {
        "request_count": 0.0,
        "error_count": 0.0,
        "total_latency_ms": 0.0,
        "avg_latency_ms": 0.0,
        "prompt_tokens": 0.0,
        "completion_tokens": 0.0,
    }


# Sample name -> (summary field it adds to, scale): one row per counter the summary sums per model.
_SUMMED: dict[str, tuple[str, float]] = {
    REQUESTS + "_total": ("request_count", 1.0),
    REQUEST_ERRORS + "_total": ("error_count", 1.0),
    DURATION + "_sum": ("total_latency_ms", 1000.0),
    DURATION + "_count": ("_timed", 1.0),  # requests timed: the average's divisor
}


def _summed_field(name: str, labels: dict[str, str]) -> tuple[str, float] | None:
    """The summary field (and scale) a sample adds to, or None: tokens by their `type` label, the rest by name."""
    if name == TOKENS + "_total":
        kind = labels.get("type")
        return (kind + "_tokens", 1.0) if kind in ("prompt", "completion") else None
    return _SUMMED.get(name)


def _finished(e: dict[str, float], count: float) -> dict[str, Any]:
    """One summed entry as the summary shows it: counts as integers, latency in ms rounded, its average."""
    latency = e["total_latency_ms"]
    return {
        "request_count": int(round(e["request_count"])),
        "error_count": int(round(e["error_count"])),
        "total_latency_ms": round(latency, 3),
        "avg_latency_ms": round(latency / count, 3) if count else 0.0,
        "prompt_tokens": int(round(e["prompt_tokens"])),
        "completion_tokens": int(round(e["completion_tokens"])),
    }


def summary(registry: CollectorRegistry) -> dict[str, Any]:
    """The counters a simple dashboard wants, summed over workers (and label values)."""
    total = _model_entry()
    streams = requests_active = 0.0
    by_model: dict[str, dict[str, float]] = {}
    for family in registry.collect():
        for s in family.samples:
            name, labels, value = s.name, s.labels, s.value
            if name == STREAMS_IN_FLIGHT:
                streams += value
                continue
            if name == REQUESTS_IN_FLIGHT:
                requests_active += value
                continue
            summed = _summed_field(name, labels)
            if summed is None:
                continue
            key, scale = summed
            entry = by_model.setdefault(labels.get("model", "other"), _model_entry())
            for e in (total, entry):
                e[key] = e.get(key, 0.0) + value * scale
    out = _finished(total, total.get("_timed", 0.0))
    out["streams_active"] = int(round(streams))
    out["requests_active"] = int(round(requests_active))
    out["by_model"] = {m: _finished(e, e.get("_timed", 0.0)) for m, e in sorted(by_model.items())}
    return out


def render(registry: CollectorRegistry, accept: str, query: str = "") -> tuple[bytes, str]:
    """The body and content type for a scrape of `registry`."""
    if wants_json(accept, query):
        return json.dumps(summary(registry), separators=(",", ":")).encode(), JSON_TYPE
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type


# -- the metrics-only listener (OBSERVABILITY_PORT) ---------------------------


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass


def metrics_app(
    get_registry: Callable[[], CollectorRegistry],
    allowed: Networks | None = None,
    trusted: Networks | None = None,
) -> Callable[..., Iterable[bytes]]:
    """A WSGI app answering every GET with the scrape (text, OpenMetrics or JSON); with `allowed`
    (METRICS_ALLOWED_IPS) only to those clients (`X-Forwarded-For` believed from `trusted` proxies only)."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if allowed is not None:
            forwarded = [environ["HTTP_X_FORWARDED_FOR"]] if "HTTP_X_FORWARDED_FOR" in environ else []
            if client_address(environ.get("REMOTE_ADDR"), forwarded, trusted) not in allowed:
                body = (
                    b'{"error": {"message": "Metrics are not served to this address.", '
                    b'"type": "invalid_request_error", "param": null, "code": "ip_not_allowed"}}'
                )
                start_response(
                    "403 Forbidden", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
                )
                return [body]
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Content-Type", "text/plain"), ("Allow", "GET")])
            return [b"GET only\n"]
        body, content_type = render(get_registry(), environ.get("HTTP_ACCEPT", ""), environ.get("QUERY_STRING", ""))
        start_response("200 OK", [("Content-Type", content_type), ("Content-Length", str(len(body)))])
        return [b"" if environ["REQUEST_METHOD"] == "HEAD" else body]

    return app


def start_server(
    host: str,
    port: int,
    get_registry: Callable[[], CollectorRegistry],
    allowed: Networks | None = None,
    trusted: Networks | None = None,
) -> WSGIServer:
    """Serve metrics on host:port from a daemon thread; returns the server (`shutdown()` stops it)."""
    server = make_server(
        host, port, metrics_app(get_registry, allowed, trusted), server_class=_Server, handler_class=_QuietHandler
    )
    threading.Thread(target=server.serve_forever, name="cot-proxy-metrics", daemon=True).start()
    return server

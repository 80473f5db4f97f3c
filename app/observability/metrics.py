"""The proxy's Prometheus metrics, defined once per process.

Plain `prometheus_client` in multiprocess mode: under Gunicorn every worker
writes memory-mapped files in `PROMETHEUS_MULTIPROC_DIR` (prepared by
gunicorn.conf.py) and a scrape sums them (exposition.py). Without that
variable (`python cot_proxy.py`, tests) the values live in this process.

Every label value is bounded: route = API family, model = a configured or
listed model else `other` (labels.py), provider = a configured target name,
status = an HTTP status, kind = one of a fixed set.
"""

from __future__ import annotations

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from . import exposition as names

REGISTRY = prometheus_client.REGISTRY
"""The default registry: what a scrape reads when not in multiprocess mode, so metrics other
modules define there are served too (in multiprocess mode every metric is in the files anyway)."""

DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
TTFB_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)

requests = Counter(
    names.REQUESTS,
    "Relayed requests by route, model, provider and status.",
    ["route", "model", "provider", "status"],
    registry=REGISTRY,
)
request_errors = Counter(
    names.REQUEST_ERRORS,
    "Requests that ended in an error (status >= 400 or broken off).",
    ["route", "model", "kind"],
    registry=REGISTRY,
)
duration = Histogram(
    names.DURATION,
    "Request duration, to the last byte sent.",
    ["route", "model", "provider"],
    buckets=DURATION_BUCKETS,
    registry=REGISTRY,
)
ttfb = Histogram(
    names.TTFB,
    "Streams: time to the first byte (first event) sent to the client.",
    ["route", "model", "provider"],
    buckets=TTFB_BUCKETS,
    registry=REGISTRY,
)
upstream_errors = Counter(
    names.UPSTREAM_ERRORS,
    "Upstream failures by provider and kind (connect, timeout, 5xx, bad_response, midstream).",
    ["provider", "kind"],
    registry=REGISTRY,
)
tokens = Counter(
    names.TOKENS,
    "Tokens reported in answers' usage, by model and type (prompt, completion).",
    ["model", "type"],
    registry=REGISTRY,
)
requests_in_flight = Gauge(
    names.REQUESTS_IN_FLIGHT,
    "Requests admitted and not finished.",
    ["route"],
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
streams_in_flight = Gauge(
    names.STREAMS_IN_FLIGHT, "SSE streams being relayed.", [], multiprocess_mode="livesum", registry=REGISTRY
)
think_blocks = Counter(
    names.THINK_BLOCKS,
    "Reasoning blocks taken out of answers, by model and mode.",
    ["model", "mode"],
    registry=REGISTRY,
)
think_prefill_learned = Counter(
    names.THINK_PREFILL_LEARNED,
    "think_prefilled=auto: what a process learned about a model's chat template "
    "(new or changed): prefilled=true (answers start inside the reasoning) or false.",
    ["model", "prefilled"],
    registry=REGISTRY,
)
fallbacks = Counter(
    names.FALLBACKS,
    "Extra attempts taken (fallbacks and retries), by route and final provider.",
    ["route", "provider"],
    registry=REGISTRY,
)
rate_limited = Counter(names.RATE_LIMITED, "Requests the proxy itself refused with 429.", ["route"], registry=REGISTRY)
backend_up = Gauge(
    names.BACKEND_UP,
    "1 if the backend's last answer was usable, 0 if it failed.",
    ["provider", "backend"],
    multiprocess_mode="mostrecent",
    registry=REGISTRY,
)
prefix_cache_tokens = Counter(
    names.PREFIX_CACHE_TOKENS,
    "Prompt tokens of answers that reported usage.prompt_tokens_details.cached_tokens, "
    "by provider, backend and type (prompt, cached): the backend's prefix-cache hit rate is cached / prompt.",
    ["provider", "backend", "type"],
    registry=REGISTRY,
)
sink_dropped = Counter(
    names.SINK_DROPPED, "Completion records dropped because the sink's queue was full.", ["sink"], registry=REGISTRY
)
sink_errors = Counter(names.SINK_ERRORS, "Completion records a sink failed to handle.", ["sink"], registry=REGISTRY)


def scrape_registry() -> CollectorRegistry:
    return names.scrape_registry(REGISTRY)


_children: dict[tuple[object, tuple[str, ...]], object] = {}


def child(metric: prometheus_client.metrics.MetricWrapperBase, *labels: str):  # noqa: ANN201 - the metric's child
    """`metric.labels(*labels)`, looked up once per label set: `labels()` validates and locks on every call.
    Label values are bounded (labels.py), so this is no larger than the metric's own table of children."""
    key = (metric, labels)
    found = _children.get(key)
    if found is None:
        found = _children[key] = metric.labels(*labels)
    return found

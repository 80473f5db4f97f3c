"""Observability: Prometheus metrics, one log line per request, completion sinks, tracing.

    settings.py        OBSERVABILITY_* / LOG_* / COMPLETION_* variables (stdlib only)
    logformat.py       JSON and text log formats, secret masking (stdlib only)
    exposition.py      scrapes: Prometheus text, JSON summary, the metrics-only port
    metrics.py         the metric objects (multiprocess-safe)
    labels.py          bounded model label values
    observer.py        the `Observer` and `Recorder` transforms (admit / done hooks)
    reassemble.py      a streamed answer rebuilt as one body
    sinks.py           completion sinks behind bounded queues
    tracing.py         OpenTelemetry, imported only when configured
    web.py             the Flask side (logging set-up, /metrics)
    gunicorn_hooks.py  master-side hooks (multiprocess directory, dead workers, log format)

Nothing heavy is imported here: app/config.py imports `settings` through this package.
"""

from __future__ import annotations

from typing import Any


def init_app(app: Any, config: Any) -> None:
    """Logging, `GET /metrics` and request hooks on `app` (call before other hooks are registered)."""
    from .web import init_app as _init_app

    _init_app(app, config)


def pipeline_steps(config: Any) -> list[Any]:
    """The observability transforms, to go last in the pipeline (they must see final answers)."""
    from .observer import steps

    return steps(config)

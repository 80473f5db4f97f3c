"""Observability settings, read once from the environment.

Standard library only: app/config.py imports this module, and gunicorn.conf.py
loads it in the master (before gevent patches anything) for its hooks.
Every error is an `ObservabilityConfigError` whose message starts with the variable.

    LOG_FORMAT=json|text             one JSON object per line (default) or text for humans
    LOG_LEVEL=debug|info|warning|error   default info (debug with DEBUG=true)
    LOG_BODY_MAX_CHARS=2000          DEBUG=true: bodies in the request log line, cut to this
    METRICS_ENABLED=true             false: no metrics anywhere (no GET /metrics, no OBSERVABILITY_PORT listener)
    METRICS_ON_MAIN_PORT=true        GET /metrics on the API port
    METRICS_ALLOWED_IPS=cidr,...     only these clients may read GET /metrics on the API port (app/clientip.py)
    OBSERVABILITY_PORT=8801          also serve /metrics on this port (private scrape network)
    OBSERVABILITY_HOST=0.0.0.0       its address
    METRICS_MODELS=a,b               extra model names allowed as metric labels
    COMPLETION_LOG_FILE=path         completion records as JSON Lines, rotated
    COMPLETION_LOG_MAX_BYTES=104857600  rotate past this size (0: never)
    COMPLETION_LOG_BACKUPS=5         rotated files kept
    COMPLETION_WEBHOOK_URL=url       POST each completion record as JSON
    COMPLETION_WEBHOOK_TIMEOUT_SECONDS=5
    COMPLETION_QUEUE_SIZE=1000       records waiting per sink; more are dropped and counted
    COMPLETION_SINKS=pkg.mod:Class   user sinks (comma-separated), each with handle(record)
    OTEL_EXPORTER_OTLP_ENDPOINT=url  tracing with OpenTelemetry, OTLP/HTTP (requirements-otel.txt)
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=url  the same, the full traces URL
    OTEL_SERVICE_NAME=cot-proxy
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from ..clientip import Networks, networks_from_env
from ..envparse import ConfigError, boolean, choice, integer, items, number, text, url

LOG_FORMATS = ("json", "text")
LOG_LEVELS = ("debug", "info", "warning", "error")
_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*([:.][A-Za-z_][A-Za-z0-9_]*)$")


class ObservabilityConfigError(ConfigError):
    """A malformed observability variable; the message starts with its name."""


@dataclass(frozen=True)
class ObservabilitySettings:
    log_format: str = "json"
    log_level: str | None = None
    """None: info, or debug when DEBUG=true."""
    log_body_max_chars: int = 2000
    metrics_enabled: bool = True
    """METRICS_ENABLED (the Nexus gateway's switch): false turns off both places metrics are served."""
    metrics_on_main_port: bool = True
    """GET /metrics on the API port (METRICS_ON_MAIN_PORT, and only with METRICS_ENABLED)."""
    metrics_allowed_ips: Networks | None = None
    """METRICS_ALLOWED_IPS: who may read GET /metrics on the API port; None = anyone."""
    port: int | None = None
    """OBSERVABILITY_PORT: a second listener serving only metrics (None with METRICS_ENABLED=false)."""
    host: str = "0.0.0.0"
    metrics_models: tuple[str, ...] = ()
    completion_log_file: str | None = None
    completion_log_max_bytes: int = 100 * 1024 * 1024
    completion_log_backups: int = 5
    webhook_url: str | None = None
    webhook_timeout: float = 5.0
    queue_size: int = 1000
    sinks: tuple[str, ...] = ()
    """Dotted paths of user sink classes (`pkg.module:Class` or `pkg.module.Class`)."""
    otel_endpoint: str | None = None
    """Tracing is on when set (OTEL_EXPORTER_OTLP_ENDPOINT, or the traces one)."""
    otel_traces_endpoint: str | None = None
    """OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, used as is; else `<otel_endpoint>/v1/traces`."""
    otel_service_name: str = "cot-proxy"

    @property
    def records_completions(self) -> bool:
        """Whether any completion sink is configured (then answers are captured)."""
        return bool(self.completion_log_file or self.webhook_url or self.sinks)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ObservabilitySettings:
        enabled = boolean(env, "METRICS_ENABLED", True)
        port = integer(env, "OBSERVABILITY_PORT", None, low=1, high=65535)
        otel = url(env, "OTEL_EXPORTER_OTLP_ENDPOINT", secret=True)
        traces = url(env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", secret=True)
        return cls(
            log_format=choice(env, "LOG_FORMAT", LOG_FORMATS, "json"),
            log_level=choice(env, "LOG_LEVEL", LOG_LEVELS, None),
            log_body_max_chars=integer(env, "LOG_BODY_MAX_CHARS", 2000, low=0),
            metrics_enabled=enabled,
            metrics_on_main_port=enabled and boolean(env, "METRICS_ON_MAIN_PORT", True),
            metrics_allowed_ips=networks_from_env(env, "METRICS_ALLOWED_IPS"),
            port=port if enabled else None,
            host=text(env, "OBSERVABILITY_HOST") or "0.0.0.0",
            metrics_models=items(env, "METRICS_MODELS"),
            completion_log_file=text(env, "COMPLETION_LOG_FILE"),
            completion_log_max_bytes=integer(env, "COMPLETION_LOG_MAX_BYTES", 100 * 1024 * 1024, low=0),
            completion_log_backups=integer(env, "COMPLETION_LOG_BACKUPS", 5, low=0),
            webhook_url=url(env, "COMPLETION_WEBHOOK_URL", secret=True),
            webhook_timeout=number(env, "COMPLETION_WEBHOOK_TIMEOUT_SECONDS", 5.0, positive=True),
            queue_size=integer(env, "COMPLETION_QUEUE_SIZE", 1000, low=1),
            sinks=tuple(_sinks(env, "COMPLETION_SINKS")),
            otel_endpoint=otel or traces,
            otel_traces_endpoint=traces,
            otel_service_name=text(env, "OTEL_SERVICE_NAME") or "cot-proxy",
        )


def _sinks(env: Mapping[str, str], name: str) -> list[str]:
    paths = items(env, name)
    for path in paths:
        if not _DOTTED.match(path):
            raise ObservabilityConfigError(f"{name}: {path!r} is not a dotted path like pkg.module:Class")
    return paths

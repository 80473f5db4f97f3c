"""The Flask side: logging set-up, `GET /metrics`, client details for the log line,
the line for requests that are not relayed, tracing, and the metrics listener
under `python cot_proxy.py`."""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

from flask import Flask, Response, g, request

from .. import request_id
from ..clientip import allow_only, client_text
from ..redact import hint
from . import metrics
from .exposition import render, start_server
from .logformat import make_formatter
from .observer import CLIENT, ClientInfo, write_access_line

log = logging.getLogger("cot_proxy.observability")
METRICS_ENDPOINT = "cot_proxy_metrics"
QUIET_BLUEPRINTS = ("probes",)
_listener: Any = None


def setup_logging(config: Any) -> None:
    """The `cot_proxy` loggers write to stderr in LOG_FORMAT, each line tagged with the request id."""
    settings = config.observability
    root = logging.getLogger("cot_proxy")
    for handler in list(root.handlers):
        if getattr(handler, "_cot_proxy", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler._cot_proxy = True  # type: ignore[attr-defined]
    handler.setFormatter(make_formatter(settings.log_format))
    handler.addFilter(request_id.RequestIdFilter())
    root.addHandler(handler)
    root.propagate = False
    level = settings.log_level or ("debug" if getattr(config, "debug", False) else "info")
    root.setLevel(level.upper())


def _client_info(req: Any, trusted: Any) -> ClientInfo:
    """`trusted`: TRUSTED_PROXIES, whose X-Forwarded-For names the client behind them."""
    environ = req.environ
    credential = environ.get("HTTP_AUTHORIZATION") or environ.get("HTTP_X_API_KEY") or environ.get("HTTP_API_KEY")
    return ClientInfo(address=client_text(req, trusted), key_hint=hint(credential))


def _metrics_allowlist(config: Any) -> Any:
    return config.observability.metrics_allowed_ips


def init_app(app: Flask, config: Any) -> None:
    settings = config.observability
    setup_logging(config)
    trusted = getattr(getattr(config, "access", None), "trusted_proxies", None)

    @app.before_request
    def _observe_client() -> None:
        g.cot_proxy_client = info = _client_info(request._get_current_object(), trusted)  # type: ignore[attr-defined]
        CLIENT.set(info)  # for `Observer.done`, which runs after this request context is gone

    @app.after_request
    def _log_unrelayed(response: Response) -> Response:
        """Every request's access-log line, at close: a relayed one's fields come from `Observer.done`
        (which runs first: close callbacks run in order), the others' (probes, /metrics, unknown
        routes) are made here."""
        info: ClientInfo | None = g.get("cot_proxy_client")
        if info is None:
            return response
        req = request._get_current_object()  # type: ignore[attr-defined]
        quiet = req.blueprint in QUIET_BLUEPRINTS or req.endpoint == METRICS_ENDPOINT
        method, path, status, rid = req.method, req.path, response.status_code, request_id.current()

        def line() -> None:
            if info.fields is not None:  # relayed: the observer's fields, complete after the last byte
                write_access_line({**info.fields, "path": path})  # the client's path, if a step translated it
                return
            fields = {
                "request_id": rid,
                "method": method,
                "path": path,
                "route": None,
                "status": status,
                "latency_ms": round((time.monotonic() - info.started) * 1000, 1),
                "client": info.address,
                "key": info.key_hint,
            }
            write_access_line(fields, logging.DEBUG if quiet else logging.INFO)

        response.call_on_close(line)
        return response

    if settings.metrics_on_main_port:  # off with METRICS_ENABLED=false or METRICS_ON_MAIN_PORT=false: a 404

        @app.get("/metrics", endpoint=METRICS_ENDPOINT)
        @allow_only(_metrics_allowlist)  # METRICS_ALLOWED_IPS: others get 403 ip_not_allowed
        def _metrics() -> Response:
            body, content_type = render(
                metrics.scrape_registry(), request.headers.get("Accept", ""), request.query_string.decode("latin-1")
            )
            return Response(body, content_type=content_type, headers={"Cache-Control": "no-store"})

    if settings.otel_endpoint:
        from .tracing import init_tracing

        init_tracing(app, settings)

    sinks = [
        name for name, on in (("file", settings.completion_log_file), ("webhook", settings.webhook_url)) if on
    ] + list(settings.sinks)
    shown = (
        "off"
        if not settings.metrics_on_main_port
        else (f"on for {settings.metrics_allowed_ips}" if settings.metrics_allowed_ips else "on")
    )
    log.info(
        "observability: LOG_FORMAT=%s, /metrics %s, completion sinks: %s, tracing %s",
        settings.log_format,
        shown,
        ", ".join(sinks) or "none",
        "on" if settings.otel_endpoint else "off",
    )

    if settings.port and not os.environ.get("SERVER_SOFTWARE", "").startswith("gunicorn"):
        # Under Gunicorn the master serves it (when_ready).
        start_listener(
            settings.host, settings.port, settings.metrics_allowed_ips, getattr(config.access, "trusted_proxies", None)
        )


def start_listener(host: str, port: int, allowed: Any = None, trusted: Any = None) -> None:
    """The OBSERVABILITY_PORT listener in this process (once), for METRICS_ALLOWED_IPS only when set."""
    global _listener
    if _listener is None:
        _listener = start_server(host, port, metrics.scrape_registry, allowed, trusted)
        log.info("metrics on http://%s:%d/metrics", host, port)

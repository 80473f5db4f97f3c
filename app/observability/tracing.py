"""Optional tracing with OpenTelemetry: only when OTEL_EXPORTER_OTLP_ENDPOINT is set.

The packages (requirements-otel.txt) are imported here and only here, lazily:
without the variable nothing is imported and nothing runs per request. With
it, Flask's server spans and client spans for every upstream call go to the
OTLP/HTTP exporter (other OTEL_* variables are read by the SDK itself). Each
server span gets the request id and the model as attributes.

Client spans come from the urllib3 instrumentation, not the `requests` one:
the relay sends through `HTTPAdapter.send` (app/upstream.py), below
`Session.send` where the `requests` instrumentation hooks in; everything
`requests` sends goes through urllib3, and `traceparent` goes upstream.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

from ..exchange import Exchange

log = logging.getLogger("cot_proxy.observability")
_provider_set = False


class TracingUnavailable(RuntimeError):
    """The variable is set but the OpenTelemetry packages are missing."""


def init_tracing(app: Any, settings: Any) -> None:
    global _provider_set
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.instrumentation.flask import FlaskInstrumentor
        from opentelemetry.instrumentation.urllib3 import URLLib3Instrumentor
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise TracingUnavailable(
            f"OTEL_EXPORTER_OTLP_ENDPOINT is set but OpenTelemetry is not installed ({exc.name}); "
            "pip install -r requirements-otel.txt"
        ) from None
    if not _provider_set:  # once per process (a worker), after the fork
        provider = TracerProvider(resource=Resource.create({"service.name": settings.otel_service_name}))
        endpoint = settings.otel_traces_endpoint or settings.otel_endpoint.rstrip("/") + "/v1/traces"
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        trace.set_tracer_provider(provider)
        URLLib3Instrumentor().instrument()
        _provider_set = True
    FlaskInstrumentor().instrument_app(app, excluded_urls="healthz,livez,readyz,health,metrics")
    parts = urlsplit(settings.otel_endpoint)
    log.info("tracing to %s://%s", parts.scheme, parts.hostname)


def annotate(ex: Exchange) -> None:
    """Request id and model on the current (Flask server) span."""
    from opentelemetry import trace

    span = trace.get_current_span()
    if not span.is_recording():
        return
    span.set_attribute("cot_proxy.request_id", ex.request_id)
    span.set_attribute("cot_proxy.route", ex.api)
    if ex.client_model:
        span.set_attribute("gen_ai.request.model", ex.client_model[:200])

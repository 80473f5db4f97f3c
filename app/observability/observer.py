"""The observability transforms: `Observer` (metrics, the request log line, completion
records) and `Recorder` (captures answers for completion sinks and DEBUG logs).

Both only read: they never change a body, a header or an event. `Observer.admit`
counts a request in flight; `Observer.done`, called once after the last byte,
records everything else from `ex.outcome` and `ex.usage`.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..exchange import Exchange
from ..sse import Event
from ..transforms.base import Transform
from . import metrics
from .labels import NONE, ModelLabels, label_value
from .logformat import iso_time, mask_secrets, truncate_json
from .reassemble import StreamReassembler
from .sinks import AsyncSink, build_sinks

access_log = logging.getLogger("cot_proxy.access")
log = logging.getLogger("cot_proxy.observability")

RECORDED_FAMILIES = frozenset({"chat", "completions"})
UPSTREAM_KINDS = {
    "upstream_unavailable": "connect",
    "upstream_timeout": "timeout",
    "upstream_bad_response": "bad_response",
    "upstream_response_too_large": "bad_response",
    "upstream_not_streaming": "bad_response",
    "midstream": "midstream",
}
_KIND = re.compile(r"^[a-z0-9_]{1,48}$")


@dataclass
class ClientInfo:
    """What the Flask side knows of the client; set before the request is handled."""

    address: str | None = None
    key_hint: str | None = None
    """At most the last 4 characters of the credential the client sent."""
    started: float = field(default_factory=time.monotonic)
    fields: dict[str, Any] | None = None
    """Set by `Observer.done` for a relayed request: its access-log fields, which the Flask side
    writes at close (`web.py`), as it writes the line of every other request."""


CLIENT: ContextVar[ClientInfo | None] = ContextVar("cot_proxy_client", default=None)


@dataclass
class _State:
    client: ClientInfo | None = None
    admitted: bool = False
    stream: bool = False
    request_body: Any = None


@dataclass
class _Capture:
    response: Any = None
    stream: StreamReassembler | None = None


class Recorder(Transform):
    """Keeps the answer a client got: the final JSON body, or the stream reassembled.

    Placed after every transform that edits answers, so it sees what the client saw."""

    name = "observability.record"

    def applies(self, ex: Exchange) -> bool:
        return ex.api in RECORDED_FAMILIES

    def _capture(self, ex: Exchange) -> _Capture:
        cap = ex.state.get(self.name)
        if cap is None:
            cap = ex.state[self.name] = _Capture()
        return cap

    def response_json(self, ex: Exchange, data: Any) -> Any:
        self._capture(ex).response = data
        return data

    def stream_event(self, ex: Exchange, event: Event) -> Iterable[Event]:
        obj = event.json()
        if obj is not None:
            cap = self._capture(ex)
            if cap.stream is None:
                cap.stream = StreamReassembler()
            cap.stream.feed(obj)
        return (event,)

    def answer(self, ex: Exchange) -> Any:
        cap: _Capture | None = ex.state.get(self.name)
        if cap is None:
            return None
        if cap.stream is not None:
            return cap.stream.result(ex.api, ex.usage or cap.stream.usage)
        return cap.response


class Observer(Transform):
    name = "observability"

    def __init__(
        self,
        config: Any,
        recorder: Recorder | None = None,
        sinks: list[AsyncSink] | None = None,
        labels: ModelLabels | None = None,
    ) -> None:
        settings = config.observability
        self.settings = settings
        self.debug_bodies = bool(getattr(config, "debug", False))
        self.recorder = recorder
        self.sinks = sinks if sinks is not None else []
        self.labels = labels or ModelLabels.for_config(config)
        self.copy_request = bool(self.sinks) or self.debug_bodies
        self.tracing = settings.otel_endpoint is not None

    # -- hooks ------------------------------------------------------------------

    def admit(self, ex: Exchange) -> None:
        st = self._state(ex)
        st.admitted = True
        metrics.child(metrics.requests_in_flight, label_value(ex.api)).inc()
        if self.copy_request and ex.body is not None:
            st.request_body = orjson.loads(orjson.dumps(ex.body, default=str))  # before transforms edit it
        if self.tracing:
            from .tracing import annotate

            annotate(ex)

    def response_headers(self, ex: Exchange, status: int, headers: dict[str, str]) -> None:
        if status < 400 and headers.get("content-type", "").startswith("text/event-stream"):
            st = self._state(ex)
            if not st.stream:
                st.stream = True
                metrics.streams_in_flight.inc()

    def wants_json(self, ex: Exchange) -> bool:
        return ex.family == "models" and ex.method == "GET" and ex.path.rstrip("/") == "models"

    def response_json(self, ex: Exchange, data: Any) -> Any:
        if self.wants_json(ex) and isinstance(data, dict) and isinstance(data.get("data"), list):
            self.labels.learn(m.get("id") for m in data["data"] if isinstance(m, dict))
        return data

    def done(self, ex: Exchange) -> None:
        st = self._state(ex)
        route = label_value(ex.api)
        if st.admitted:
            metrics.child(metrics.requests_in_flight, route).dec()
        if st.stream:
            metrics.streams_in_flight.dec()
        try:
            self._metrics(ex, route)
        finally:
            fields = self._fields(ex, st)
            if st.client is not None:
                st.client.fields = fields
            else:  # no Flask side around (an exchange driven directly)
                write_access_line(fields)
            if self.sinks:
                record = self._record(ex, st, fields)
                for sink in self.sinks:
                    sink.submit(record)

    # -- the parts of `done` ------------------------------------------------------

    def _state(self, ex: Exchange) -> _State:
        st = ex.state.get(self.name)
        if st is None:
            st = ex.state[self.name] = _State(client=CLIENT.get())
        return st

    def _metrics(self, ex: Exchange, route: str) -> None:
        o = ex.outcome
        model = self.labels.label(ex.client_model)
        target = ex.target
        provider = label_value(getattr(target, "name", None)) if target is not None else NONE
        status = o.status or 0
        metrics.child(metrics.requests, route, model, provider, str(status)).inc()
        metrics.child(metrics.duration, route, model, provider).observe(o.duration)
        if o.streamed and o.ttfb is not None:
            metrics.child(metrics.ttfb, route, model, provider).observe(o.ttfb)
        if status >= 400 or o.error:
            kind = o.error if o.error and _KIND.match(o.error) else (f"http_{status}" if not o.error else "other")
            metrics.child(metrics.request_errors, route, model, kind).inc()
        self._upstream_health(ex, provider)
        if len(o.attempts) > 1:
            metrics.child(metrics.fallbacks, route, provider).inc(len(o.attempts) - 1)
        if status == 429 and not o.attempts:
            metrics.child(metrics.rate_limited, route).inc()
        prompt, completion, _ = token_counts(ex.usage)
        if prompt:
            metrics.child(metrics.tokens, model, "prompt").inc(prompt)
        if completion:
            metrics.child(metrics.tokens, model, "completion").inc(completion)
        blocks, mode = think_blocks(ex)
        if blocks:
            metrics.child(metrics.think_blocks, model, mode).inc(blocks)

    @staticmethod
    def _upstream_health(ex: Exchange, provider: str) -> None:
        """Upstream errors and backend up/down, for the attempt that answered and those that failed."""
        o, target = ex.outcome, ex.target
        upstream = upstream_error_kind(ex)
        if upstream is not None:
            metrics.child(metrics.upstream_errors, provider, upstream).inc()
        if target is not None and o.attempts:
            backend = label_value(getattr(target, "origin", None))
            down = upstream in ("connect", "timeout", "5xx")
            metrics.child(metrics.backend_up, provider, backend).set(0 if down else 1)
        for failed, code in o.failures:  # attempts that failed before a fallback or retry answered
            failed_provider = label_value(getattr(failed, "name", None))
            kind = UPSTREAM_KINDS.get(code) or ("5xx" if code.startswith("http_5") else None)
            if kind is not None:
                metrics.child(metrics.upstream_errors, failed_provider, kind).inc()
                metrics.child(metrics.backend_up, failed_provider, label_value(getattr(failed, "origin", None))).set(0)

    def _fields(self, ex: Exchange, st: _State) -> dict[str, Any]:
        o = ex.outcome
        target = ex.target
        client = st.client
        prompt, completion, total = token_counts(ex.usage)
        fields: dict[str, Any] = {
            "request_id": ex.request_id,
            "method": ex.method,
            "path": "/v1/" + ex.path,
            "route": ex.api,
            "status": o.status,
            "latency_ms": round(o.duration * 1000, 1),
            "ttfb_ms": round(o.ttfb * 1000, 1) if o.ttfb is not None else None,
            "stream": o.streamed,
            "model": _short(ex.client_model),
            "provider": getattr(target, "name", None) if target is not None else None,
            "backend": getattr(target, "origin", None) if target is not None else None,
            "attempts": list(o.attempts) if len(o.attempts) > 1 else None,
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": total,
            "client": client.address if client else None,
            "key": ex.key_name or (client.key_hint if client else None),
            "error": o.error,
        }
        if self.debug_bodies:
            limit = self.settings.log_body_max_chars
            body = st.request_body if st.request_body is not None else ex.body
            fields["request_body"] = truncate_json(mask_secrets(body), limit) if body is not None else None
            answer = self.recorder.answer(ex) if self.recorder is not None else None
            fields["response_body"] = truncate_json(mask_secrets(answer), limit) if answer is not None else None
        return fields

    def _record(self, ex: Exchange, st: _State, fields: dict[str, Any]) -> dict[str, Any]:
        o = ex.outcome
        started = time.time() - (time.monotonic() - o.started)
        return {
            "request_id": ex.request_id,
            "created": round(started, 3),
            "route": ex.api,
            "method": ex.method,
            "path": fields["path"],
            "model": ex.client_model,
            "provider": fields["provider"],
            "backend": fields["backend"],
            "attempts": list(o.attempts),
            "status": o.status,
            "error": o.error,
            "stream": o.streamed,
            "timings": {
                "started_at": iso_time(started),
                "duration_ms": fields["latency_ms"],
                "ttfb_ms": fields["ttfb_ms"],
            },
            "usage": ex.usage,
            "request": st.request_body if st.request_body is not None else ex.body,
            "response": self.recorder.answer(ex) if self.recorder is not None else None,
            "client": {"address": fields["client"], "key": fields["key"]},
        }

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


def upstream_error_kind(ex: Exchange) -> str | None:
    """connect, timeout, bad_response, midstream or 5xx when the upstream is to blame, else None."""
    o = ex.outcome
    if o.error in UPSTREAM_KINDS:
        return UPSTREAM_KINDS[o.error]
    if o.error is None and o.attempts and o.status >= 500:
        return "5xx"
    return None


def write_access_line(fields: dict[str, Any], level: int = logging.INFO) -> None:
    """The one writer of access-log lines (relayed or not)."""
    access_log.log(level, "%s %s %s", fields["method"], fields["path"], fields["status"], extra={"fields": fields})


def token_counts(usage: Any) -> tuple[int | None, int | None, int | None]:
    """(prompt, completion, total) from an OpenAI `usage` (also the Responses API's names)."""
    if not isinstance(usage, dict):
        return None, None, None

    def num(*keys: str) -> int | None:
        for key in keys:
            value = usage.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
                return int(value)
        return None

    return num("prompt_tokens", "input_tokens"), num("completion_tokens", "output_tokens"), num("total_tokens")


def think_blocks(ex: Exchange) -> tuple[int, str]:
    """Reasoning blocks the think transform took out, and its mode (`strip`, `separate`).

    Reads `ex.state["think"].blocks` when the transform keeps such a count; else, for
    streams, the choices whose splitter met a tag."""
    st = ex.state.get("think")
    if st is None:
        return 0, "none"
    settings = getattr(st, "settings", None)
    mode = getattr(settings, "mode", None) or "strip"
    blocks = getattr(st, "blocks", None)
    if not isinstance(blocks, int):
        splitters = getattr(st, "splitters", None) or {}
        blocks = sum(1 for s in splitters.values() if getattr(s, "seen_tag", False))
    return blocks, label_value(mode)


def _short(text: str | None, limit: int = 200) -> str | None:
    return text if text is None or len(text) <= limit else text[:limit] + "…"


def steps(config: Any) -> list[Transform]:
    """The transforms to append at the end of the pipeline."""
    settings = config.observability
    recorder = Recorder() if settings.records_completions or getattr(config, "debug", False) else None
    observer = Observer(config, recorder, build_sinks(settings))
    return [t for t in (recorder, observer) if t is not None]

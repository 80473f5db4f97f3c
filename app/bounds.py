"""Size and time bounds on what the proxy reads, from the environment.

Every body the proxy reads, from the client or from an upstream, has a ceiling,
so no request and no upstream can grow a worker without limit or hold it forever.
Standard library only: config.py imports it in the Gunicorn master.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .envparse import integer, number

MIB = 1024 * 1024


@dataclass(frozen=True)
class Bounds:
    max_request_bytes: int = 32 * MIB
    """Larger request bodies get 413, chunked or not; none of it goes upstream."""
    request_body_timeout: float = 60.0
    """Seconds to receive a whole request body; slower gets 408."""
    max_response_bytes: int = 128 * MIB
    """A JSON answer the proxy reads whole (to check or transform it); larger is a 502."""
    max_event_bytes: int = 16 * MIB
    """One SSE event; larger ends the stream with an in-band error."""
    max_error_bytes: int = 1 * MIB
    """An upstream error body; the rest is dropped."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Bounds:
        return cls(
            max_request_bytes=integer(env, "MAX_REQUEST_BYTES", cls.max_request_bytes, low=1),
            request_body_timeout=number(env, "REQUEST_BODY_TIMEOUT_SECONDS", cls.request_body_timeout, positive=True),
            max_response_bytes=integer(env, "MAX_RESPONSE_BYTES", cls.max_response_bytes, low=1024),
            max_event_bytes=integer(env, "MAX_SSE_EVENT_BYTES", cls.max_event_bytes, low=1024),
        )

"""An upstream event stream on its way to the client: SSE bytes -> events -> the stream steps -> bytes.

Per chunk: decode complete events, pass them through the steps that touch streams
(none: the bytes go out as they came), flush what the steps hold at `[DONE]` or at the
end, and before an in-band error.
"""

from __future__ import annotations

import logging

from .sse import Event, SSEDecoder
from .transforms import BoundPipeline

log = logging.getLogger("cot_proxy.relay")


class EventStream:
    """Upstream SSE bytes -> events -> the stream steps -> bytes for the client."""

    def __init__(self, bound: BoundPipeline, max_event_bytes: int | None) -> None:
        self.bound = bound
        self.decoder = SSEDecoder(max_event_bytes)
        self.transform = bound.touches_stream
        self.ended = not self.transform  # no step to flush

    def feed(self, chunk: bytes) -> bytes:
        events = self.decoder.feed(chunk)
        if not events:
            return b""
        if not self.transform:
            return b"".join(e.raw for e in events)
        out: list[Event] = []
        for event in events:
            if event.is_done and not self.ended:
                self.ended = True
                out.extend(self.bound.stream_end())
                out.extend(self.bound.stream_event(event))  # a translating step ends its API's own way
            else:
                out.extend(self.bound.stream_event(event))
        return b"".join(e.raw for e in out)

    def end(self) -> bytes:
        """After the upstream's last byte: what the steps still hold, if no `[DONE]` flushed it."""
        if self.ended:
            return b""
        self.ended = True
        return b"".join(e.raw for e in self.bound.stream_end())

    def flushed(self) -> bytes:
        """What the steps still hold, before an error event ends the stream (never raises)."""
        try:
            return self.end()
        except Exception:
            log.exception("a stream step failed while flushing")
            return b""

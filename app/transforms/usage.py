"""Usage capture: every answer's `usage` lands in `ex.usage` for accounting and metrics.

For streams the upstream is asked for usage (`stream_options.include_usage`)
even when the client did not ask; that extra usage chunk is then removed
again, so the client sees exactly what it asked for.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..exchange import Exchange
from ..sse import Event, may_have_key
from .base import Transform

FAMILIES = frozenset({"chat", "completions"})


class UsageCapture(Transform):
    name = "usage"

    def __init__(self, request_stream_usage: bool = True) -> None:
        self.request_stream_usage = request_stream_usage

    def applies(self, ex: Exchange) -> bool:
        return ex.family in FAMILIES or ex.family == "embeddings"

    def request(self, ex: Exchange) -> None:
        if not (self.request_stream_usage and ex.streaming and ex.family in FAMILIES):
            return
        options = ex.body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            return
        ex.body["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
        ex.state[self.name] = "injected"

    def response_json(self, ex: Exchange, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("usage"), dict):
            ex.usage = data["usage"]
        return data

    def stream_event(self, ex: Exchange, event: Event) -> Iterable[Event]:
        if not event.parsed and not may_have_key(event.raw, b'"usage"'):
            return (event,)  # no `usage` key: not worth a parse (the chat steps parse every event anyway)
        obj = event.json()
        if not isinstance(obj, dict) or not isinstance(obj.get("usage"), dict):
            return (event,)
        ex.usage = obj["usage"]
        if ex.state.get(self.name) != "injected":
            return (event,)
        if not obj.get("choices"):
            return ()  # the usage-only chunk the client never asked for
        del obj["usage"]
        event.set_json(obj)
        return (event,)

"""`Pipeline`: the ordered transforms of one request, and the only caller of hooks."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from ..exchange import Exchange
from ..sse import Event
from .base import HOOKS, Transform, overrides

log = logging.getLogger("cot_proxy.transforms")


class Pipeline:
    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)
        self._authenticate = [t for t in self.transforms if overrides(t, "authenticate")]
        self._admit = [t for t in self.transforms if overrides(t, "admit")]
        self._attempt = [t for t in self.transforms if overrides(t, "attempt")]
        self._done = [t for t in self.transforms if overrides(t, "done")]

    def authenticate(self, ex: Exchange) -> None:
        for t in self._authenticate:
            t.authenticate(ex)

    def admit(self, ex: Exchange) -> None:
        for t in self._admit:
            t.admit(ex)

    def attempt(self, ex: Exchange) -> None:
        for t in self._attempt:
            t.attempt(ex)

    def done(self, ex: Exchange) -> None:
        for t in self._done:
            try:
                t.done(ex)
            except Exception:  # a broken observer must not break the next one
                log.exception("done hook of %s failed", t.name)

    def bind(self, ex: Exchange) -> BoundPipeline:
        return BoundPipeline(ex, [t for t in self.transforms if t.applies(ex)])


class BoundPipeline:
    """The transforms that apply to one exchange, with hooks pre-sorted."""

    def __init__(self, ex: Exchange, transforms: list[Transform]) -> None:
        self.ex = ex
        self.transforms = transforms
        # Each hook's list, in order, of the transforms that define it: no call to a base no-op.
        self._request: list[Transform] = []
        self._resend: list[Transform] = []
        self._headers: list[Transform] = []
        self._json: list[Transform] = []
        self._errors: list[Transform] = []
        self._stream: list[Transform] = []
        self._wants: list[Transform] = []
        for t in transforms:
            hooks = _hooks(t)
            for hook, into in (
                ("request", self._request),
                ("resend", self._resend),
                ("response_headers", self._headers),
                ("response_json", self._json),
                ("error_json", self._errors),
            ):
                if hook in hooks:
                    into.append(t)
            if "stream_event" in hooks or "stream_end" in hooks:
                self._stream.append(t)
            if "response_json" in hooks or type(t).wants_json is not Transform.wants_json:
                self._wants.append(t)
        self.touches_errors = bool(self._errors)

    def request(self) -> None:
        for t in self._request:
            t.request(self.ex)

    def resend(self, status: int) -> bool:
        return any(t.resend(self.ex, status) for t in self._resend)

    def response_headers(self, status: int, headers: dict[str, str]) -> None:
        for t in self._headers:
            t.response_headers(self.ex, status, headers)

    @property
    def wants_json(self) -> bool:
        return any(t.wants_json(self.ex) for t in self._wants)

    def response_json(self, data: Any) -> Any:
        for t in self._json:
            data = t.response_json(self.ex, data)
        return data

    def error_json(self, status: int, data: Any) -> Any:
        for t in self._errors:
            data = t.error_json(self.ex, status, data)
        return data

    @property
    def touches_stream(self) -> bool:
        return bool(self._stream)

    def stream_event(self, event: Event) -> list[Event]:
        events = [event]
        for t in self._stream:
            out: list[Event] = []
            for e in events:
                out.extend(t.stream_event(self.ex, e))
            events = out
            if not events:
                break
        return events

    def stream_end(self) -> list[Event]:
        """Flush every transform; what one flushes still passes the later ones."""
        events: list[Event] = []
        for i, t in enumerate(self._stream):
            flushed = list(t.stream_end(self.ex))
            for later in self._stream[i + 1 :]:
                flushed = [o for e in flushed for o in later.stream_event(self.ex, e)]
            events.extend(flushed)
        return events


def _hooks(transform: Transform) -> frozenset[str]:
    """The hooks a transform's class overrides, found once per class (bind runs per request)."""
    cls = type(transform)
    found = _OVERRIDDEN.get(cls)
    if found is None:
        found = _OVERRIDDEN[cls] = frozenset(h for h in HOOKS if overrides(transform, h))
    return found


_OVERRIDDEN: dict[type, frozenset[str]] = {}

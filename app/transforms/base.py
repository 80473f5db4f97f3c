"""The transform contract: small objects with optional hooks, called in order.

A transform overrides only the hooks it needs; the relay calls nothing else.
Hooks run in list order: `authenticate` (headers only, before the body is read),
`admit` (every request, before routing), `attempt` (per attempt, once the target
is known: may change what the attempt speaks), then for transforms whose
`applies` is true, `request` on the way out and `resend`, `response_headers`,
`response_json` / `error_json`, `stream_event`, `stream_end` on the way back;
finally `done` (every request, after the last byte).
Per-request state goes in `exchange.state[self.name]`: one transform object
serves every request.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..exchange import Exchange
from ..sse import Event


class Transform:
    name = "transform"

    def applies(self, ex: Exchange) -> bool:
        """Whether this transform takes part in `ex` at all (checked once per request)."""
        return True

    def authenticate(self, ex: Exchange) -> None:
        """From the headers alone, before the body is read: raise a `ProxyError` to refuse.
        Set `ex.needs_model` if `admit` must know the model of a non-JSON family."""

    def admit(self, ex: Exchange) -> None:
        """After the body is read, before routing, for every request: raise a `ProxyError`
        to refuse it (model allow-list, strict checks, limits)."""

    def attempt(self, ex: Exchange) -> None:
        """Per attempt, once `ex.target` is set and before `applies` is asked: may set `ex.family`,
        `ex.path`, `ex.query`, `ex.body`, `ex.headers` to what this target speaks (the relay
        restores the client's before each attempt)."""

    def resend(self, ex: Exchange, status: int) -> bool:
        """After an upstream answer with `status`: True sends the same attempt again (its hooks
        re-run from the client's request), at most once per attempt."""
        return False

    def request(self, ex: Exchange) -> None:
        """Edit `ex.body` / `ex.headers` before they go upstream."""

    def response_headers(self, ex: Exchange, status: int, headers: dict[str, str]) -> None:
        """Edit the headers going back to the client (keys are lower-case)."""

    def wants_json(self, ex: Exchange) -> bool:
        """True if `response_json` must see a non-streamed body (it is then read whole)."""
        return type(self).response_json is not Transform.response_json

    def response_json(self, ex: Exchange, data: Any) -> Any:
        """Return the (possibly new) decoded JSON body of a successful answer."""
        return data

    def error_json(self, ex: Exchange, status: int, data: Any) -> Any:
        """Return the (possibly new) JSON body of an upstream error answer (status >= 400)."""
        return data

    def stream_event(self, ex: Exchange, event: Event) -> Iterable[Event]:
        """Return the events to send in place of `event`: itself, none, or several. The
        upstream's `[DONE]` comes through here too, after `stream_end`."""
        return (event,)

    def stream_end(self, ex: Exchange) -> Iterable[Event]:
        """Events to send after the last upstream event (before `[DONE]`)."""
        return ()

    def done(self, ex: Exchange) -> None:
        """After the last byte went to the client (or it left), once per request, for
        every transform that defines it: metrics, logs, usage, releasing limits.
        `ex.outcome` says how it ended. Must not raise."""


HOOKS = (
    "authenticate",
    "admit",
    "attempt",
    "request",
    "resend",
    "response_headers",
    "response_json",
    "error_json",
    "stream_event",
    "stream_end",
    "done",
)


def overrides(transform: Transform, hook: str) -> bool:
    return getattr(type(transform), hook) is not getattr(Transform, hook)

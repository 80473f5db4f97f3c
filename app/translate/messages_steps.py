"""The transform pair that serves Anthropic Messages over chat-completions upstreams.

`MessagesRequest` (early; `attempt` / `resend` / `request`): per attempt, decides from the target's
`apis["messages"]` mode whether this attempt passes the request through untouched or speaks chat
completions (`to_chat`, `ex.family = "chat"`), so every chat step after it (usage, think,
overrides, model names) works as on `/v1/chat/completions`. `auto` sends the request as it is the
first time a backend is seen; a 404/405 answer makes the relay send it again translated, and the
backend's answer is remembered (per worker) so each backend costs at most one probe.

`MessagesResponse` (late: after Think and ModelName, before observability): turns the chat answer
back into Anthropic's shape: the JSON message, the event stream (`MessageStream`), and upstream
error bodies. It applies only to translated attempts: a passed-through answer stays byte-identical.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from ..exchange import Exchange
from ..sse import Event
from ..transforms.base import Transform
from ..transforms.think import Think
from . import messages as m

log = logging.getLogger("cot_proxy.translate")

API = "messages"
MODES = ("passthrough", "translate", "auto")
DEFAULT_MODE = "auto"
MISSING = (404, 405)
"""What an upstream that does not serve `/v1/messages` answers."""
MAX_LEARNED = 4096
CLIENT_ONLY_HEADERS = ("x-api-key", "anthropic-version", "anthropic-beta", "anthropic-dangerous-direct-browser-access")
"""Anthropic's headers: meaningless to a chat server, and `x-api-key` is a credential."""
QUERY = "messages_request.query"
"""`ex.state` key of the client's query string, kept across attempts."""


def target_mode(target: Any) -> str:
    """The target's `messages` mode (`Target.apis`), `auto` when it says none."""
    apis = getattr(target, "apis", None) or {}
    mode = apis.get(API, DEFAULT_MODE)
    return mode if mode in MODES else DEFAULT_MODE


@dataclass
class MessagesState:
    """One attempt's decision and what the answer's conversion needs from the request."""

    translate: bool
    probing: bool = False
    """`auto` and the backend not known yet: sent as it is; a 404/405 resends it translated."""
    thinking: bool = False
    stops: tuple[str, ...] = ()
    estimate: int = 0
    stream: m.MessageStream | None = field(default=None, repr=False)


class MessagesRequest(Transform):
    """Per attempt: pass `/v1/messages` through, or translate it into chat completions."""

    name = "messages_request"

    def __init__(self) -> None:
        self._learned: dict[str, str] = {}
        """Backend base URL -> `translate` or `passthrough`, as its answers showed (`auto`)."""
        self._lock = threading.Lock()

    def learned(self, target: Any) -> str | None:
        return self._learned.get(target.base_url)

    def _learn(self, target: Any, mode: str) -> None:
        with self._lock:
            if len(self._learned) >= MAX_LEARNED:
                self._learned.clear()  # a bound, not a cache policy: backends are few
            if self._learned.get(target.base_url) != mode:
                log.info(
                    "%s: /v1/messages %s",
                    target.origin,
                    "is translated to chat completions" if mode == "translate" else "passes through",
                )
            self._learned[target.base_url] = mode

    def applies(self, ex: Exchange) -> bool:
        return ex.api == API and isinstance(ex.state.get(self.name), MessagesState)

    def attempt(self, ex: Exchange) -> None:
        if ex.api != API or not isinstance(ex.body, dict) or ex.target is None:
            return
        mode = target_mode(ex.target)
        if mode == "auto":
            mode = self.learned(ex.target) or "probe"
        # The client's query (Claude Code sends `?beta=true`) is for a Messages server only.
        query = ex.query = ex.state.setdefault(QUERY, ex.query)
        if mode != "translate":
            ex.state[self.name] = MessagesState(translate=False, probing=mode == "probe")
            return
        if query:
            ex.query = ""
        body = ex.body
        ex.state[self.name] = MessagesState(
            translate=True,
            thinking=m.thinking_enabled(body),
            stops=tuple(body.get("stop_sequences") or ()),
            estimate=m.count_tokens(body),
        )
        ex.body = m.to_chat(body)
        ex.family, ex.path = "chat", "chat/completions"
        key = ex.headers.get("x-api-key")
        for name in CLIENT_ONLY_HEADERS:
            ex.headers.pop(name, None)
        if key and "authorization" not in ex.headers:
            # The client's own upstream key (the proxy's auth is off, else the guard took it): chat's header.
            ex.headers["authorization"] = f"Bearer {key}"

    def resend(self, ex: Exchange, status: int) -> bool:
        st = ex.state.get(self.name)
        if not isinstance(st, MessagesState) or not st.probing:
            return False
        if status in MISSING:
            self._learn(ex.target, "translate")
            return True
        if status < 400:
            self._learn(ex.target, "passthrough")
        return False

    def request(self, ex: Exchange) -> None:
        """`thinking` asked for: reasoning the think step would strip is separated instead, so it can
        come back as thinking blocks (after `applies`, the think step's state exists)."""
        st: MessagesState = ex.state[self.name]
        think = ex.state.get(Think.name)
        if st.translate and st.thinking and think is not None and think.settings.mode == "strip":
            think.settings = replace(think.settings, mode="separate")


class MessagesResponse(Transform):
    """Chat answers of a translated attempt -> Anthropic messages, events and errors."""

    name = "messages_response"

    def applies(self, ex: Exchange) -> bool:
        st = ex.state.get(MessagesRequest.name)
        return ex.api == API and isinstance(st, MessagesState) and st.translate

    def response_json(self, ex: Exchange, data: Any) -> Any:
        st: MessagesState = ex.state[MessagesRequest.name]
        return m.from_chat(data, model=ex.client_model, stops=st.stops, input_estimate=st.estimate)

    def error_json(self, ex: Exchange, status: int, data: Any) -> Any:
        return m.upstream_error(status, data)

    def _stream(self, ex: Exchange) -> m.MessageStream:
        st: MessagesState = ex.state[MessagesRequest.name]
        if st.stream is None:
            st.stream = m.MessageStream(model=ex.client_model or "", stops=st.stops, input_estimate=st.estimate)
        return st.stream

    def stream_event(self, ex: Exchange, event: Event) -> Iterable[Event]:
        data = event.json()
        if not isinstance(data, dict):
            return ()  # `[DONE]`, comments: Anthropic's stream has neither
        if "error" in data and not data.get("choices"):
            # An upstream's in-band error: Anthropic's `error` event, and the message ends there.
            stream = self._stream(ex)
            stream.ended = True
            return (m.sse_event("error", m.upstream_error(500, data)),)
        return self._stream(ex).feed(data)

    def stream_end(self, ex: Exchange) -> Iterable[Event]:
        if ex.outcome.error is not None:
            return ()  # the relay's error event follows: no message_stop before it
        return self._stream(ex).end(ex.usage)

"""The step pair that serves `POST /v1/responses` over a chat-completions upstream.

`ResponsesRequest` (early; `attempt` and `resend` hooks): per attempt, once the target is known, decides
how its backend is spoken to, from the provider's `responses` switch (config.yaml) or RESPONSES_API
(single target):
- `passthrough`: the request goes upstream as the client sent it;
- `translate`: it becomes a chat-completions request (`ex.family = "chat"`), so every chat step
  (usage, think, model names, limits, metrics) applies to the attempt as on `/v1/chat/completions`;
- `auto` (the default): passthrough, until the backend answers 404 or 405 to it; then the same attempt
  is sent again translated, and this worker remembers the backend (`chat_only`) for later requests.
  A translated attempt answered 404 makes it forget (the 404 was about the model, not the route).
A request continuing a response this proxy stored (`previous_response_id`) is always translated in `auto`:
the upstream never saw that response.

`ResponsesAnswer` (late; after the think step, so reasoning is already split out): turns the chat answer
into a `response` object, or the chat stream into Responses events, and stores the result
(app/translate/store.py) unless the request said `store: false`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..config import Config
from ..errors import InvalidRequest
from ..exchange import Exchange
from ..sse import Event
from ..transforms.base import Transform
from . import responses as rs
from .store import ResponseStore

log = logging.getLogger("cot_proxy.translate")

API = "responses"
MISSING_ROUTE = frozenset({404, 405})
"""What a server that does not know `/v1/responses` answers."""
MAX_REMEMBERED = 4096
"""Backends remembered as chat-only (a bound; there are never this many)."""


@dataclass
class Passthrough:
    auto: bool


@dataclass
class Translation:
    """One translated attempt: the response being built, and what a stored record needs."""

    sk: rs.Skeleton
    conversation: list[Any]
    owner: str
    auto: bool
    stream: rs.StreamState | None = None
    stored: bool = field(default=False)


def owner_of(ex: Exchange) -> str:
    """Whose stored responses these are: the access guard's subject (stable, not secret)."""
    return str(getattr(ex.identity, "subject", None) or "anonymous")


def is_create(ex: Exchange) -> bool:
    return ex.api == API and ex.method == "POST" and ex.path.rstrip("/") == API and isinstance(ex.body, dict)


class ResponsesRequest(Transform):
    name = "responses"

    def __init__(self, config: Config, store: ResponseStore) -> None:
        self.store = store
        self.modes = {name: spec.apis.get(API, "auto") for name, spec in config.routing_settings.providers.items()}
        self.chat_only: set[str] = set()
        """Base URLs of backends that answered 404/405 to `/v1/responses` (this worker's view)."""
        self._lock = threading.Lock()

    def mode_for(self, target: Any) -> str:
        return self.modes.get(getattr(target, "name", ""), "auto")

    def applies(self, ex: Exchange) -> bool:
        return isinstance(ex.state.get(self.name), (Passthrough, Translation))

    def attempt(self, ex: Exchange) -> None:
        ex.state.pop(self.name, None)
        if not is_create(ex) or ex.target is None:
            return
        mode = self.mode_for(ex.target)
        body = ex.body
        previous = body.get("previous_response_id")
        record = None
        if isinstance(previous, str) and mode != "passthrough":
            record = self.store.get(previous, owner_of(ex))
        translate = mode == "translate" or (
            mode == "auto" and (record is not None or ex.target.base_url in self.chat_only)
        )
        if not translate:
            ex.state[self.name] = Passthrough(auto=mode == "auto")
            return
        if isinstance(previous, str) and record is None:
            raise InvalidRequest(
                f"Previous response with id '{previous}' not found.",
                param="previous_response_id",
                code="previous_response_not_found",
            )
        chat, conversation = rs.to_chat(body, record["messages"] if record else None)
        sk = rs.Skeleton.of(body, ex.client_model or chat.get("model"))
        tr = Translation(sk, conversation, owner_of(ex), auto=mode == "auto")
        if chat.get("stream"):
            tr.stream = rs.StreamState(sk)
        ex.state[self.name] = tr
        ex.body, ex.family, ex.path, ex.query = chat, "chat", "chat/completions", ""

    def resend(self, ex: Exchange, status: int) -> bool:
        st = ex.state.get(self.name)
        base = ex.target.base_url
        if isinstance(st, Passthrough) and st.auto and status in MISSING_ROUTE:
            with self._lock:
                if len(self.chat_only) < MAX_REMEMBERED:
                    self.chat_only.add(base)
            log.info("%s answered %d to /v1/responses: serving it over chat completions", ex.target.origin, status)
            return True
        if isinstance(st, Translation) and st.auto and status == 404 and base in self.chat_only:
            with self._lock:
                self.chat_only.discard(base)  # its chat route 404s too: the model, not the route, was missing
        return False


def sse(payload: dict[str, Any]) -> Event:
    """One Responses event as OpenAI writes it: an `event:` line naming its type, then the data."""
    return Event(b"event: " + payload["type"].encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n")


class ResponsesAnswer(Transform):
    name = "responses_answer"

    def __init__(self, store: ResponseStore) -> None:
        self.store = store

    def applies(self, ex: Exchange) -> bool:
        return isinstance(ex.state.get(ResponsesRequest.name), Translation)

    def _keep(self, tr: Translation, response: dict[str, Any]) -> None:
        if not tr.sk.store or tr.stored:
            return
        tr.stored = True
        self.store.put(
            response["id"], tr.owner, {"response": response, "messages": rs.history_of(tr.conversation, response)}
        )

    def response_json(self, ex: Exchange, data: Any) -> Any:
        tr: Translation = ex.state[ResponsesRequest.name]
        response = rs.from_chat(data, tr.sk)
        self._keep(tr, response)
        return response

    def stream_event(self, ex: Exchange, event: Event) -> Iterable[Event]:
        tr: Translation = ex.state[ResponsesRequest.name]
        state = tr.stream
        if state is None:
            return (event,)
        if event.is_done:
            return ()  # Responses streams end with response.completed, not [DONE]
        chunk = event.json()
        if isinstance(chunk, dict) and isinstance(chunk.get("error"), dict):
            err = chunk["error"]
            message = str(err.get("message") or "The upstream reported an error.")
            return [*map(sse, state.fail(message)), event]
        return [sse(e) for e in state.feed(chunk)]

    def stream_end(self, ex: Exchange) -> Iterable[Event]:
        tr: Translation = ex.state[ResponsesRequest.name]
        state = tr.stream
        if state is None or state.ended:
            return ()
        if state.finished is None:
            # No finish_reason: the upstream broke off (the relay adds its error event after this).
            return [sse(e) for e in state.fail("The upstream stream ended before the answer was complete.")]
        events = [sse(e) for e in state.finish(ex.usage)]
        self._keep(tr, state.final)
        return events


def responses_steps(config: Config) -> tuple[ResponsesRequest, ResponsesAnswer]:
    """The pair, sharing one response store (Redis, this host's workers' file, or memory)."""
    from ..observability.exposition import multiprocess_dir
    from .store import make_store

    access = config.access
    store = make_store(
        config.responses_store, access.redis_url, access.redis_prefix, access.redis_timeout, multiprocess_dir()
    )
    return ResponsesRequest(config, store), ResponsesAnswer(store)

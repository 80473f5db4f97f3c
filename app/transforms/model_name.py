"""The client sees the model name it asked for, whatever name went upstream.

Routing (`provider/model`, aliases) and `upstream_model_name` change the model
sent upstream; answers (the JSON body, every stream chunk) name the client's
model again. Placed after every step that may rename the request.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..exchange import Exchange
from ..sse import Event, may_have_key
from .base import Transform

FAMILIES = frozenset({"chat", "completions", "embeddings"})
KEY = b'"model"'


class ModelName(Transform):
    name = "model_name"

    def applies(self, ex: Exchange) -> bool:
        return ex.family in FAMILIES and ex.client_model is not None and isinstance(ex.body, dict)

    def request(self, ex: Exchange) -> None:
        if ex.body.get("model") != ex.client_model:
            ex.state[self.name] = True

    def wants_json(self, ex: Exchange) -> bool:
        return self.name in ex.state

    def response_json(self, ex: Exchange, data: Any) -> Any:
        if self.name in ex.state and isinstance(data, dict) and "model" in data:
            data["model"] = ex.client_model
        return data

    def stream_event(self, ex: Exchange, event: Event) -> Iterable[Event]:
        if self.name not in ex.state or (not event.parsed and not may_have_key(event.raw, KEY)):
            return (event,)  # no `model` key at all: not worth a parse
        data = event.json()
        if isinstance(data, dict) and data.get("model") not in (None, ex.client_model):
            # Re-serialised, not spliced: orjson writes a 260-byte chunk in ~0.25 us, less than the
            # checks that would make a byte substitution certain cost (bench/chunk_cost.py, README).
            data["model"] = ex.client_model
            event.set_json(data)
        return (event,)

"""Per-model request changes from `LLM_PARAMS`: parameters, aliases, an appended instruction.

The group is looked up by the model name the client sent. The `model=default` /
`model=*` group covers chat and completions requests whose model has no group of
its own; it is not applied to embeddings, where sampling parameters would be
rejected. (`model_name.ModelName` gives answers the client's model name back.)
`GET /v1/models` lists
the configured names the upstream does not, so clients can pick them.
"""

from __future__ import annotations

import copy
import time
from typing import Any

from ..exchange import Exchange
from ..model_params import ModelParams, ModelTable
from .base import Transform

GENERATION = frozenset({"chat", "completions"})
FAMILIES = GENERATION | {"embeddings"}
OWNER = "cot-proxy"


class Overrides(Transform):
    name = "overrides"

    def __init__(self, table: ModelTable, created: int | None = None) -> None:
        self.table = table
        self.created = int(time.time()) if created is None else created

    def applies(self, ex: Exchange) -> bool:
        if ex.family == "models":
            return ex.method == "GET" and ex.path == "models" and bool(self.table.names)
        if ex.family not in FAMILIES or not isinstance(ex.body, dict):
            return False
        params = self.table.lookup(ex.client_model, fallback=ex.family in GENERATION)
        if params is None:
            return False
        ex.state[self.name] = params
        return True

    def request(self, ex: Exchange) -> None:
        params: ModelParams | None = ex.state.get(self.name)
        if params is not None:
            apply_params(ex.body, params, chat=ex.family == "chat")

    def wants_json(self, ex: Exchange) -> bool:
        return ex.family == "models"

    def response_json(self, ex: Exchange, data: Any) -> Any:
        if ex.family == "models":
            return add_models(data, self.table.names, self.created)
        return data


def apply_params(body: dict[str, Any], params: ModelParams, *, chat: bool) -> None:
    """Weak defaults, then strong overrides (cot_proxy's semantics), alias, appended text."""
    for key, value in params.defaults.items():
        if body.get(key) is None:
            body[key] = _fresh(value)
    for key, value in params.overrides.items():
        body[key] = _fresh(value)
    if params.upstream_model is not None:
        body["model"] = params.upstream_model
    if params.append_text and chat:
        append_to_last_user_message(body, params.append_text)


def append_to_last_user_message(body: dict[str, Any], text: str) -> None:
    """cot_proxy's rule: extend the last user message's text, else add a user message."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        messages = body["messages"] = []
    last = messages[-1] if messages else None
    if not isinstance(last, dict) or last.get("role") != "user":
        messages.append({"role": "user", "content": text})
        return
    content = last.get("content")
    if isinstance(content, str):
        last["content"] = content + text
    elif isinstance(content, list):
        part = next((p for p in reversed(content) if isinstance(p, dict) and p.get("type") == "text"), None)
        if part is None:
            content.append({"type": "text", "text": text})
        else:
            part["text"] = (part.get("text") or "") + text
    else:
        last["content"] = text


def add_models(data: Any, names: list[str], created: int) -> Any:
    """Append an entry per configured name the upstream's list lacks (no duplicates)."""
    if not isinstance(data, dict):
        return data
    listed = data.setdefault("data", [])
    if not isinstance(listed, list):
        return data
    have = {m.get("id") for m in listed if isinstance(m, dict)}
    for name in names:
        if name not in have:
            listed.append({"id": name, "object": "model", "created": created, "owned_by": OWNER})
            have.add(name)
    return data


def _fresh(value: Any) -> Any:
    """Config values are shared by all requests: hand out copies of mutable ones."""
    return copy.deepcopy(value) if isinstance(value, (list, dict)) else value

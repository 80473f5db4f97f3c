"""`Exchange`: one client request on its way through the proxy.

Transforms see and change the request through this object only, never through
Flask, so each can be tested alone with a hand-made Exchange.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Exchange:
    request_id: str
    family: str
    """API family (`chat`, `completions`, `embeddings`, `models`, `media`, `passthrough`)."""
    method: str
    path: str
    """Path under `/v1/`, without the leading slash, e.g. `chat/completions`."""
    query: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    """Headers to send upstream; transforms may edit them."""
    body: Any = None
    """Parsed JSON body (mutable), or None for non-JSON bodies."""
    client_model: str | None = None
    """The model name the client asked for, before any alias."""
    target: Any = None
    """The `upstream.Target` chosen by the router (None in echo mode)."""
    state: dict[str, Any] = field(default_factory=dict)
    """Per-request scratch space, keyed by transform name."""

    @property
    def streaming(self) -> bool:
        return isinstance(self.body, dict) and self.body.get("stream") is True

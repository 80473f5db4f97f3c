"""`Exchange`: one client request on its way through the proxy.

Transforms see and change the request through this object only, never through
Flask, so each can be tested alone with a hand-made Exchange.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .access.auth import Identity


@dataclass
class Outcome:
    """How a request ended, filled in by the relay; read by `done` hooks."""

    started: float = field(default_factory=time.monotonic)
    status: int = 0
    first_byte_at: float | None = None
    """When the first body byte went to the client (streams: the first event)."""
    bytes_out: int = 0
    """Body bytes sent to the client so far."""
    finished_at: float | None = None
    streamed: bool = False
    error: str | None = None
    """Error kind: an error code (`upstream_timeout`, ...), `midstream` or `client_disconnected`."""
    attempts: list[str] = field(default_factory=list)
    """Targets tried, in order (fallbacks and retries)."""
    failures: list[tuple[Any, str]] = field(default_factory=list)
    """Attempts that failed before the one that answered: (target, error code or `http_<status>`)."""

    @property
    def duration(self) -> float:
        return (self.finished_at or time.monotonic()) - self.started

    @property
    def ttfb(self) -> float | None:
        return None if self.first_byte_at is None else self.first_byte_at - self.started


@dataclass
class Exchange:
    request_id: str
    family: str
    """API family this attempt speaks upstream (`chat`, `completions`, `embeddings`, `models`, `media`,
    `passthrough`, ...); an `attempt` hook may change it (translation), the relay restores it per attempt."""
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
    identity: Identity | None = None
    """Who the client is, once the access guard authenticated it (kind, name, subject; never the key)."""
    needs_model: bool = False
    """Set by `authenticate` hooks: find `client_model` in a non-JSON family's body too."""
    target: Any = None
    """The `upstream.Target` chosen by the router (None in echo mode)."""
    state: dict[str, Any] = field(default_factory=dict)
    """Per-request scratch space, keyed by transform name."""
    usage: dict[str, Any] | None = None
    """The answer's `usage` object, when the upstream (or echo) reported one."""
    outcome: Outcome = field(default_factory=Outcome)
    api: str = ""
    """The API family the client spoke (`Family.name`); never changes. Defaults to `family`."""
    cancelled: bool = False
    """Set by `cancel()`: the relay ends the request with a `cancelled` error."""
    interrupt: Callable[[], None] | None = field(default=None, repr=False)
    """Set by the relay while an upstream call is open: wakes it from another greenlet or thread."""

    def __post_init__(self) -> None:
        self.api = self.api or self.family

    def cancel(self) -> None:
        """End this request from elsewhere (an operator): the upstream is closed, a stream ends
        with an in-band `cancelled` error. Safe to call from another greenlet or thread, twice."""
        self.cancelled = True
        if self.interrupt is not None:
            self.interrupt()

    @property
    def key_name(self) -> str | None:
        """The client's key name (never the key itself); None when anonymous."""
        identity = self.identity
        return None if identity is None or identity.kind == "anonymous" else identity.name

    @property
    def streaming(self) -> bool:
        return isinstance(self.body, dict) and self.body.get("stream") is True

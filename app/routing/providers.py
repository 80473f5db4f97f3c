"""Provider types. A type is one small class: its targets, its model list, its health URL.

To add one: subclass `Provider`, override what differs, and register it in `TYPES`.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import deque
from dataclasses import replace
from typing import Any

from ..exchange import Exchange
from ..livepeer.settings import Capability, LivepeerSettings
from ..upstream import Target
from .backends import Backend
from .balance import make_strategy
from .cache_aware import STATE, CacheAware, Decision, prompt_tokens
from .settings import ProviderSpec

log = logging.getLogger("cot_proxy.routing")
PENDING_MAX = 4096
"""Requests routed by `cache_aware` whose answer's usage is still to be read (a bound, not a queue)."""


class Provider:
    kind = "openai"

    def __init__(
        self,
        spec: ProviderSpec,
        *,
        connect_timeout: float,
        read_timeout: float,
        livepeer: LivepeerSettings | None = None,
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.retries = spec.retries
        self._strategy = make_strategy(spec.balance)
        self._counter = itertools.count()
        self._pending: deque[Exchange] = deque(maxlen=PENDING_MAX)
        self._pending_lock = threading.Lock()
        self.backends = [
            Backend(
                target=Target(
                    base_url=b.base_url,
                    api_key=b.api_key or spec.api_key,
                    connect_timeout=spec.connect_timeout_seconds or connect_timeout,
                    read_timeout=spec.timeout_seconds or read_timeout,
                    name=spec.name,
                    kind=self.kind,
                    apis=spec.apis,
                ),
                weight=b.weight,
                failure_threshold=spec.failure_threshold,
                cooldown_seconds=spec.cooldown_seconds,
            )
            for b in spec.backends
        ]
        if isinstance(self._strategy, CacheAware):
            for backend in self.backends:
                backend.on_end = self._ended

    def order(self, ex: Exchange) -> list[Backend]:
        """Backends in preference order: healthy ones by the strategy, then the rest."""
        ranked = self._strategy(self.backends, ex, self._counter, self.spec.affinity_prefix_chars)
        if isinstance(ex.state.get(STATE), Decision):
            with self._pending_lock:
                self._pending.append(ex)
        return [b for b in ranked if b.healthy()] + [b for b in ranked if not b.healthy()]

    def _ended(self, backend: Backend) -> None:
        """A request ended on one of our backends: read the usage of every routed request
        that has finished (the relay marks `finished_at` before releasing the backend)."""
        with self._pending_lock:
            done = [ex for ex in self._pending if ex.outcome.finished_at is not None]
            if not done:
                return
            self._pending = deque((ex for ex in self._pending if ex.outcome.finished_at is None), maxlen=PENDING_MAX)
        by_target = {id(b.target): b for b in self.backends}
        for ex in done:
            decision = ex.state.pop(STATE, None)
            answered = by_target.get(id(ex.target))
            if not isinstance(decision, Decision) or answered is None or ex.usage is None:
                continue
            try:
                cached = decision.strategy.feedback(decision, answered, ex.usage)
                if cached is not None:
                    _count_hit(self.name, answered, cached, prompt_tokens(ex.usage))
            except Exception:
                log.exception("reading the prefix-cache feedback failed")

    def targets(self) -> list[tuple[Target, Backend]]:
        """Every target this provider may send to, with the backend it belongs to."""
        return [(b.target, b) for b in self.backends]

    def order_for_listing(self) -> list[Backend]:
        return [b for b in self.backends if b.healthy()] + [b for b in self.backends if not b.healthy()]

    def target_for(self, backend: Backend, ex: Exchange) -> Target | None:
        """The target to send `ex` to on `backend` (None: this provider does not serve the path)."""
        return backend.target

    def models_url(self, backend: Backend) -> str | None:
        return backend.target.base_url + "models"

    def parse_models(self, data: Any) -> list[str]:
        items = data.get("data") if isinstance(data, dict) else None
        return [m["id"] for m in items or [] if isinstance(m, dict) and isinstance(m.get("id"), str)]

    def health_url(self, backend: Backend) -> str | None:
        check = self.spec.health_check
        return None if check is None else backend.target.base_url + check.path.lstrip("/")


def _count_hit(provider: str, backend: Backend, cached: int, prompt: int | None) -> None:
    from ..observability import metrics

    labels = (provider, backend.target.origin)
    metrics.prefix_cache_tokens.labels(*labels, "cached").inc(cached)
    if prompt is not None:
        metrics.prefix_cache_tokens.labels(*labels, "prompt").inc(max(prompt, cached))


class OllamaProvider(Provider):
    """Ollama through its OpenAI-compatible /v1 API; models from /api/tags."""

    kind = "ollama"

    def models_url(self, backend: Backend) -> str | None:
        return backend.target.base_url.removesuffix("v1/") + "api/tags"

    def parse_models(self, data: Any) -> list[str]:
        items = data.get("models") if isinstance(data, dict) else None
        return [m["name"] for m in items or [] if isinstance(m, dict) and isinstance(m.get("name"), str)]


class LivepeerProvider(Provider):
    """A Livepeer BYOC gateway: one capability per route, the `Livepeer` header per route."""

    kind = "livepeer"

    def __init__(
        self,
        spec: ProviderSpec,
        *,
        connect_timeout: float,
        read_timeout: float,
        livepeer: LivepeerSettings | None = None,
    ) -> None:
        super().__init__(spec, connect_timeout=connect_timeout, read_timeout=read_timeout)
        self._routes: dict[int, dict[str, Target]] = {}
        for i, backend in enumerate(self.backends):
            gateway = backend.target.base_url.rstrip("/").removesuffix("/v1")
            # Capabilities and timeouts from the environment's Livepeer settings, if any.
            settings = (
                replace(livepeer, gateway_url=gateway)
                if livepeer is not None
                else LivepeerSettings.from_env({"GATEWAY_URL": gateway})
            )
            assert settings is not None
            self._routes[i] = {
                path: self._route_target(backend.target, settings, gateway, cap)
                for path, cap in settings.routes.items()
            }

    @staticmethod
    def _route_target(base: Target, settings: LivepeerSettings, gateway: str, cap: Capability) -> Target:
        return Target(
            base_url=gateway + "/process/request/v1/",
            connect_timeout=base.connect_timeout,
            read_timeout=float(cap.timeout_seconds),
            name=base.name,
            kind="livepeer",
            headers={"livepeer": settings.header(cap)},
        )

    def target_for(self, backend: Backend, ex: Exchange) -> Target | None:
        return self._routes[self.backends.index(backend)].get(ex.path.rstrip("/"))

    def targets(self) -> list[tuple[Target, Backend]]:
        return [(t, b) for i, b in enumerate(self.backends) for t in self._routes[i].values()]

    def models_url(self, backend: Backend) -> str | None:
        return None  # a gateway has no model list; `models:` in the config lists them


TYPES: dict[str, type[Provider]] = {"openai": Provider, "ollama": OllamaProvider, "livepeer": LivepeerProvider}


def build(
    spec: ProviderSpec, *, connect_timeout: float, read_timeout: float, livepeer: LivepeerSettings | None = None
) -> Provider:
    return TYPES[spec.type](spec, connect_timeout=connect_timeout, read_timeout=read_timeout, livepeer=livepeer)

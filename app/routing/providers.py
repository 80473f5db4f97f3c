"""Provider types. A type is one small class: its targets, its model list, its health URL.

To add one: subclass `Provider`, override what differs, and register it in `TYPES`.
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Any

from ..exchange import Exchange
from ..livepeer.settings import Capability, LivepeerSettings
from ..upstream import Target
from .backends import Backend
from .balance import STRATEGIES
from .settings import ProviderSpec


class Provider:
    kind = "openai"

    def __init__(self, spec: ProviderSpec, *, connect_timeout: float, read_timeout: float,
                 livepeer: LivepeerSettings | None = None) -> None:
        self.spec = spec
        self.name = spec.name
        self.retries = spec.retries
        self._strategy = STRATEGIES[spec.balance]
        self._counter = itertools.count()
        self.backends = [
            Backend(
                target=Target(
                    base_url=b.base_url, api_key=b.api_key or spec.api_key,
                    connect_timeout=spec.connect_timeout_seconds or connect_timeout,
                    read_timeout=spec.timeout_seconds or read_timeout,
                    name=spec.name, kind=self.kind,
                ),
                weight=b.weight, failure_threshold=spec.failure_threshold, cooldown_seconds=spec.cooldown_seconds,
            )
            for b in spec.backends
        ]

    def order(self, ex: Exchange) -> list[Backend]:
        """Backends in preference order: healthy ones by the strategy, then the rest."""
        ranked = self._strategy(self.backends, ex, self._counter, self.spec.affinity_prefix_chars)
        return [b for b in ranked if b.healthy()] + [b for b in ranked if not b.healthy()]

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

    def __init__(self, spec: ProviderSpec, *, connect_timeout: float, read_timeout: float,
                 livepeer: LivepeerSettings | None = None) -> None:
        super().__init__(spec, connect_timeout=connect_timeout, read_timeout=read_timeout)
        self._routes: dict[int, dict[str, Target]] = {}
        for i, backend in enumerate(self.backends):
            gateway = backend.target.base_url.rstrip("/").removesuffix("/v1")
            # Capabilities and timeouts from the environment's Livepeer settings, if any.
            settings = (replace(livepeer, gateway_url=gateway) if livepeer is not None
                        else LivepeerSettings.from_env({"GATEWAY_URL": gateway}))
            assert settings is not None
            self._routes[i] = {path: self._route_target(backend.target, settings, gateway, cap)
                               for path, cap in settings.routes.items()}

    @staticmethod
    def _route_target(base: Target, settings: LivepeerSettings, gateway: str, cap: Capability) -> Target:
        return Target(base_url=gateway + "/process/request/v1/", connect_timeout=base.connect_timeout,
                      read_timeout=float(cap.timeout_seconds), name=base.name, kind="livepeer",
                      headers={"livepeer": settings.header(cap)})

    def target_for(self, backend: Backend, ex: Exchange) -> Target | None:
        return self._routes[self.backends.index(backend)].get(ex.path.rstrip("/"))

    def targets(self) -> list[tuple[Target, Backend]]:
        return [(t, b) for i, b in enumerate(self.backends) for t in self._routes[i].values()]

    def models_url(self, backend: Backend) -> str | None:
        return None  # a gateway has no model list; `models:` in the config lists them


TYPES: dict[str, type[Provider]] = {"openai": Provider, "ollama": OllamaProvider, "livepeer": LivepeerProvider}


def build(spec: ProviderSpec, *, connect_timeout: float, read_timeout: float,
          livepeer: LivepeerSettings | None = None) -> Provider:
    return TYPES[spec.type](spec, connect_timeout=connect_timeout, read_timeout=read_timeout, livepeer=livepeer)

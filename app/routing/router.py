"""The router: which upstream answers a request, as a plan of attempts tried in order.

    alias with a route      -> each `provider/model` of the route in turn
    alias with a provider   -> that provider, `upstream_model` (or the alias)
    an id a provider lists  -> that provider, the id unchanged
    `provider/model`        -> that provider, `model` (only the first `/` splits)
    bare name, no model     -> the default provider
    anything else           -> 404 model_not_found (never an address the client chose)

Each provider contributes 1 + `retries` attempts over its backends in balance
order (healthy first). With one provider from the environment and no config
file the router is transparent: model names pass untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import Config
from ..errors import MethodNotAllowed, NotFound
from ..exchange import Exchange
from ..upstream import Target
from .backends import Backend
from .catalog import Catalog
from .providers import Provider, build
from .settings import BackendSpec, ProviderSpec
from .shared import SharedEjections

IN_FLIGHT = "routing.in_flight"
GATEWAY = "livepeer-gateway"


@dataclass(frozen=True)
class Attempt:
    """One try: where to send, and the model name to send there (None = unchanged)."""

    target: Target
    model: str | None = None
    label: str = "default"
    """Who answered, for the `X-Cot-Proxy-Provider` header and logs."""


def gateway_provider(config: Config) -> Provider | None:
    """`GATEWAY_URL` as a provider of type `livepeer` that claims the gateway's routes (a request
    on another path goes to the other providers, or echo mode)."""
    if config.livepeer is None:
        return None
    spec = ProviderSpec(
        name=GATEWAY, type="livepeer", backends=(BackendSpec(config.livepeer.gateway_url + "/"),), retries=0
    )
    return build(
        spec, connect_timeout=config.connect_timeout, read_timeout=config.read_timeout, livepeer=config.livepeer
    )


class Router:
    def __init__(self, config: Config) -> None:
        settings = config.routing_settings
        self.settings = settings
        self.transparent = settings.transparent
        self.providers: dict[str, Provider] = {
            name: build(
                spec, connect_timeout=config.connect_timeout, read_timeout=config.read_timeout, livepeer=config.livepeer
            )
            for name, spec in settings.providers.items()
        }
        self.default_provider = settings.default_provider
        self.gateway = gateway_provider(config)
        every = [*self.providers.values(), *([self.gateway] if self.gateway is not None else [])]
        self._backends: dict[int, Backend] = {id(target): backend for p in every for target, backend in p.targets()}
        extra = [name for name in config.llm_params.names if name not in ("default", "*")]
        shared = None
        if config.access.redis_url and not self.transparent:
            shared = SharedEjections(
                config.access.redis_url, timeout=config.access.redis_timeout, prefix=config.access.redis_prefix
            )
            for backend in self._backends.values():
                backend.on_eject = shared.publish
        self.catalog = Catalog(self.providers, [*settings.models, *extra], settings.models_refresh_seconds, shared)

    def start(self) -> None:
        """Background model lists and probes; not needed in transparent mode."""
        if not self.transparent:
            self.catalog.start()

    # -- planning -----------------------------------------------------------

    def plan(self, ex: Exchange) -> list[Attempt]:
        if self.gateway is not None and (claimed := self.gateway.target_for(self.gateway.backends[0], ex)):
            if ex.method != "POST":
                raise MethodNotAllowed(f"/v1/{ex.path} accepts POST only.")
            return [Attempt(claimed, label=GATEWAY)]
        if not self.providers:
            return []
        attempts: list[Attempt] = []
        for provider, model in self._resolve(ex.client_model):
            label = f"{provider.name}/{model}" if model else provider.name
            order = [(b, t) for b in provider.order(ex) if (t := provider.target_for(b, ex)) is not None]
            if not order:
                continue
            for i in range(1 + provider.retries):
                backend, target = order[i % len(order)]
                attempts.append(Attempt(target, None if self.transparent else model, label))
        if not attempts:
            raise NotFound(f"No provider serves /v1/{ex.path} for model {ex.client_model!r}.", code="model_not_found")
        return attempts

    def _resolve(self, model: str | None) -> list[tuple[Provider, str | None]]:
        default = self.providers.get(self.default_provider or "")
        if self.transparent or model is None:
            return [(default, model)] if default is not None else []
        spec = self.settings.models.get(model)
        if spec is not None:
            if spec.route:
                return [(self.providers[p], m) for p, m in (entry.split("/", 1) for entry in spec.route)]
            provider = self.providers.get(spec.provider or "") or default
            return [(provider, spec.upstream_model or model)] if provider is not None else []
        owner = self.catalog.owner_of(model)
        if owner is not None:
            return [(self.providers[owner], model)]
        prefix, sep, rest = model.partition("/")
        if sep and prefix in self.providers and rest:
            return [(self.providers[prefix], rest)]
        if not sep and default is not None:
            return [(default, model)]
        raise NotFound(
            f"The model '{model}' does not exist or no provider serves it.", param="model", code="model_not_found"
        )

    # -- feedback -----------------------------------------------------------

    def begin(self, ex: Exchange, target: Target) -> None:
        backend = self._backends.get(id(target))
        if backend is not None:
            backend.begin()
            ex.state[IN_FLIGHT] = backend

    def finished(self, ex: Exchange, target: Target, *, ok: bool, final: bool) -> None:
        """An attempt got its answer (or failed). Health is recorded now; the in-flight
        count drops now for a failed attempt, at `release` for the one that answers."""
        backend = self._backends.get(id(target))
        if backend is not None:
            backend.record(ok)
        if not final:
            self.release(ex)

    def release(self, ex: Exchange) -> None:
        backend = ex.state.pop(IN_FLIGHT, None)
        if backend is not None:
            backend.end()

    # -- views ----------------------------------------------------------------

    @property
    def health_target(self) -> Target | None:
        """What /health probes in transparent mode: the upstream, else the gateway."""
        default = self.providers.get(self.default_provider or "")
        if default is not None:
            return default.backends[0].target
        gateway = self.gateway.targets() if self.gateway is not None else []
        return gateway[0][0] if gateway else None

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready while a backend of the default provider (or of any, without one) is up."""
        states = {name: [b.state() for b in p.backends] for name, p in self.providers.items()}
        default = self.providers.get(self.default_provider or "")
        pool = default.backends if default is not None else [b for p in self.providers.values() for b in p.backends]
        return any(b.healthy() for b in pool), {"default_provider": self.default_provider, "providers": states}

    def model_entries(self) -> list[dict[str, Any]]:
        return self.catalog.listing()

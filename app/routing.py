"""Which upstream answers a request: a plan of attempts, tried in order.

Today: the Livepeer gateway for its capability routes when `GATEWAY_URL` is
set, else the one target from `TARGET_BASE_URL`/`BACKEND_URL`. `plan` returns
an empty list in echo mode (nothing configured for the route).
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import Config
from .errors import MethodNotAllowed
from .exchange import Exchange
from .livepeer.settings import LivepeerSettings
from .upstream import Target


@dataclass(frozen=True)
class Attempt:
    """One try: where to send, and the model name to send there (None = unchanged)."""

    target: Target
    model: str | None = None
    label: str = "default"
    """Who answered, for the `X-Cot-Proxy-Provider` header and logs."""


def livepeer_targets(settings: LivepeerSettings, connect_timeout: float) -> dict[str, Target]:
    """One target per gateway route, its `Livepeer` header computed once."""
    base = settings.gateway_url + "/process/request/v1/"
    return {
        path: Target(
            base_url=base, connect_timeout=connect_timeout, read_timeout=float(cap.timeout_seconds),
            name=f"livepeer:{cap.name}", kind="livepeer", headers={"livepeer": settings.header(cap)},
        )
        for path, cap in settings.routes.items()
    }


class Router:
    def __init__(self, config: Config) -> None:
        self.default: Target | None = None
        if config.target_base_url:
            self.default = Target(
                base_url=config.target_base_url,
                api_key=config.upstream_api_key,
                connect_timeout=config.connect_timeout,
                read_timeout=config.read_timeout,
            )
        self.livepeer: dict[str, Target] = {}
        if config.livepeer is not None:
            self.livepeer = livepeer_targets(config.livepeer, config.connect_timeout)

    @property
    def health_target(self) -> Target | None:
        """What /health and /readyz probe: the default upstream, else the gateway."""
        return self.default or next(iter(self.livepeer.values()), None)

    def plan(self, ex: Exchange) -> list[Attempt]:
        target = self.livepeer.get(ex.path.rstrip("/"))
        if target is not None:
            if ex.method != "POST":
                raise MethodNotAllowed(f"/v1/{ex.path} accepts POST only.")
            return [Attempt(target, label=target.name)]
        if self.default is None:
            return []
        return [Attempt(self.default, label=self.default.name)]

    def finished(self, target: Target, *, ok: bool) -> None:
        """Feedback after each attempt (for health and load balancing)."""

"""Which upstream answers a request. Today one target from the environment.

`Router.resolve` returns None in echo mode (nothing configured).
"""

from __future__ import annotations

from .config import Config
from .exchange import Exchange
from .upstream import Target


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

    def resolve(self, ex: Exchange) -> Target | None:
        return self.default

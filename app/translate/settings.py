"""Settings of the translated APIs, read once by `Config.from_env` (standard library only)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..envparse import integer, number

MAX_ITEMS = 1000
MAX_BYTES = 64 << 20
TTL_SECONDS = 86400.0


@dataclass(frozen=True)
class StoreBounds:
    """How much the Responses store keeps: items, bytes and age (`store` + `previous_response_id`)."""

    max_items: int = MAX_ITEMS
    max_bytes: int = MAX_BYTES
    ttl: float = TTL_SECONDS

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> StoreBounds:
        return cls(
            max_items=integer(env, "RESPONSES_STORE_MAX_ITEMS", MAX_ITEMS, low=1),
            max_bytes=integer(env, "RESPONSES_STORE_MAX_BYTES", MAX_BYTES, low=1024),
            ttl=number(env, "RESPONSES_STORE_TTL_SECONDS", TTL_SECONDS, positive=True),
        )

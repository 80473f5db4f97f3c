"""Load-balancing strategies: each is one function (backends, exchange, counter) -> preference order.

The first backend is the one to use; the rest are the failover order.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import random
from collections.abc import Callable
from typing import Any

from ..exchange import Exchange
from .backends import Backend

Strategy = Callable[[list[Backend], Exchange, "itertools.count[int]", int], list[Backend]]


def round_robin(backends: list[Backend], ex: Exchange, counter: itertools.count[int], prefix: int) -> list[Backend]:
    """Weighted: a backend of weight 2 gets two turns in each cycle."""
    ring = [b for b in backends for _ in range(b.weight)]
    start = next(counter) % len(ring)
    ordered = ring[start:] + ring[:start]
    return list(dict.fromkeys(ordered))  # unique, in first-appearance order


def least_busy(backends: list[Backend], ex: Exchange, counter: itertools.count[int], prefix: int) -> list[Backend]:
    """Fewest in-flight requests (in this worker) per unit of weight; ties broken at random."""
    return sorted(backends, key=lambda b: (b.in_flight / b.weight, random.random()))


def prefix_affinity(backends: list[Backend], ex: Exchange, counter: itertools.count[int], prefix: int) -> list[Backend]:
    """KV-cache affinity: the start of the system prompt and first user message picks the
    backend by weighted rendezvous hashing, so a conversation keeps hitting the same
    server's prefix cache, and only 1/N of keys move when a backend leaves."""
    key = affinity_key(ex.body, prefix)
    if not key:
        return least_busy(backends, ex, counter, prefix)

    def score(b: Backend) -> float:
        digest = hashlib.blake2b(key + b.target.base_url.encode(), digest_size=8).digest()
        fraction = (int.from_bytes(digest, "big") + 1) / 2**64
        return -b.weight / math.log(fraction)

    return sorted(backends, key=score, reverse=True)


def affinity_key(body: Any, prefix: int) -> bytes:
    if not isinstance(body, dict):
        return b""
    parts: list[str] = []
    messages = body.get("messages")
    if isinstance(messages, list):
        for role in ("system", "user"):
            first = next((m for m in messages if isinstance(m, dict) and m.get("role") == role), None)
            if first is not None:
                parts.append(_text(first.get("content")))
    elif isinstance(body.get("prompt"), str):
        parts.append(body["prompt"])
    return "\x00".join(parts)[:prefix].encode()


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


STRATEGIES: dict[str, Strategy] = {
    "round_robin": round_robin,
    "least_busy": least_busy,
    "prefix_affinity": prefix_affinity,
}
"""The stateless strategies; `cache_aware` keeps state, so each provider gets its own (`make_strategy`)."""


def make_strategy(name: str) -> Strategy:
    if name == "cache_aware":
        from .cache_aware import CacheAware

        return CacheAware()
    return STRATEGIES[name]

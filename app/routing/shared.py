"""Backend ejections shared by every worker and replica through Redis (`REDIS_URL`).

A worker that takes a backend out writes `cot-proxy:ejected:<base url>` with the
cool-down as its time-to-live; every worker reads those keys about once a
second (from the catalog's background thread) and takes the same backends out
until the key expires. Redis trouble never fails a request: each worker then
keeps its own view, as without Redis.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from .backends import Backend

log = logging.getLogger("cot_proxy.routing")
PREFIX = "cot-proxy:ejected:"
SYNC_SECONDS = 1.0


class SharedEjections:
    def __init__(self, redis_url: str) -> None:
        import redis

        self._errors = (redis.RedisError, OSError)
        self.client = redis.Redis.from_url(redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)

    def publish(self, backend: Backend) -> None:
        try:
            self.client.set(PREFIX + backend.target.base_url, "1", px=max(1, int(backend.cooldown_seconds * 1000)))
        except self._errors as exc:
            log.warning("sharing an ejection through Redis failed: %s", type(exc).__name__)

    def sync(self, backends: Iterable[Backend]) -> None:
        backends = list(backends)
        try:
            pipe = self.client.pipeline(transaction=False)
            for b in backends:
                pipe.pttl(PREFIX + b.target.base_url)
            ttls = pipe.execute()
        except self._errors as exc:
            log.warning("reading shared ejections from Redis failed: %s", type(exc).__name__)
            return
        now = time.monotonic()
        for backend, ttl in zip(backends, ttls, strict=True):
            if isinstance(ttl, int) and ttl > 0:
                backend.down_until = max(backend.down_until, now + ttl / 1000)

"""Backend ejections shared by every worker and replica through Redis (`REDIS_URL`).

A worker that takes a backend out writes `<prefix>ejected:<base url>` (prefix
`cot-proxy:` unless the router hands one) with the cool-down as its time-to-live;
every worker reads those keys every 0.25 s (one pipelined round trip, from the
catalog's background thread) and takes the same backends out until the key
expires: the others stop sending to a backend one worker found failing within
about that, instead of each failing on it until its own failure_threshold.
Redis trouble never fails a request: each worker then
keeps its own view, as without Redis. Every call is bounded by the Redis timeout
(REDIS_TIMEOUT_SECONDS, default 0.25 s, no retries), and after a failure Redis is
skipped for a back-off (1 s doubling to 30 s, then one probe; see
`app.access.limits.Circuit`), so a hung Redis costs one timeout, not one per ejection.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from ..access.limits import REDIS_TIMEOUT_SECONDS, Circuit, redis_client
from .backends import Backend

log = logging.getLogger("cot_proxy.routing")
PREFIX = "cot-proxy:ejected:"
"""The keys' names with the default prefix; a fleet's own REDIS_PREFIX comes in as `prefix`."""
SYNC_SECONDS = 0.25


class SharedEjections:
    def __init__(self, redis_url: str, timeout: float = REDIS_TIMEOUT_SECONDS, prefix: str = "cot-proxy:") -> None:
        import redis

        self.prefix = prefix + "ejected:"
        self._errors = (redis.RedisError, OSError)
        self.client = redis_client(redis_url, timeout)
        self.circuit = Circuit("Redis (shared ejections)", logger=log)

    def publish(self, backend: Backend) -> None:
        if not self.circuit.allow():
            return  # this worker's own view still has it out
        try:
            self.client.set(self.prefix + backend.target.base_url, "1", px=max(1, int(backend.cooldown_seconds * 1000)))
        except self._errors as exc:
            self.circuit.failed(exc)
            return
        self.circuit.succeeded()

    def sync(self, backends: Iterable[Backend]) -> None:
        backends = list(backends)
        if not backends or not self.circuit.allow():
            return
        try:
            pipe = self.client.pipeline(transaction=False)
            for b in backends:
                pipe.pttl(self.prefix + b.target.base_url)
            ttls = pipe.execute()
        except self._errors as exc:
            self.circuit.failed(exc)
            return
        self.circuit.succeeded()
        now = time.monotonic()
        for backend, ttl in zip(backends, ttls, strict=True):
            if isinstance(ttl, int) and ttl > 0:
                backend.down_until = max(backend.down_until, now + ttl / 1000)

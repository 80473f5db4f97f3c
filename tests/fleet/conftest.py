"""Fixtures of the fleet tests: the machine's Redis and PostgreSQL under a prefix and schema of their own
(removed afterwards), two fake upstream backends, and one fleet (3 replicas behind nginx) per module.
nginx, Redis or PostgreSQL missing: skipped saying so (failed under CI=true)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from app.access.store import KeyStore
from tests.fakes.openai_upstream import FakeUpstream
from tests.fleet.fleet import GRACEFUL, Fleet
from tests.fleet.streams import slow_streams
from tests.seeds import tools
from tests.support import TEST_PG_URL, TEST_REDIS_URL, pg_url

FAILURE_THRESHOLD = 30
"""Failures in a row before a worker ejects a backend: high, so a worker that avoids a failing backend
after fewer failures than this learnt it from another replica (through Redis), not by itself."""
EVENT_GAP = 0.25
"""Seconds between a stream's events (10 words: ~3 s a stream)."""


@pytest.fixture(scope="module")
def fleet_redis() -> Iterator[tuple[str, str]]:
    import redis

    client = redis.Redis.from_url(TEST_REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError:
        tools.unavailable(f"Redis at {TEST_REDIS_URL} not reachable")
    prefix = f"cot-proxy-fleet-test:{uuid.uuid4().hex[:12]}:"
    yield TEST_REDIS_URL, prefix
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(scope="module")
def fleet_database() -> Iterator[str]:
    try:
        import psycopg

        conn = psycopg.connect(TEST_PG_URL, connect_timeout=3, autocommit=True)
    except Exception:
        tools.unavailable(f"PostgreSQL at {TEST_PG_URL} not reachable")
    schema = f"cot_fleet_{uuid.uuid4().hex[:10]}"
    conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield pg_url(schema)
    finally:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")
        conn.close()


@pytest.fixture(scope="module")
def backends() -> Iterator[list[FakeUpstream]]:
    """Two backends of one provider, streaming slowly (an event every EVENT_GAP)."""
    servers = [FakeUpstream().start() for _ in range(2)]
    for s in servers:
        slow_streams(s, delay=EVENT_GAP)
    yield servers
    for s in servers:
        s.stop()


@dataclass
class FleetUnderTest:
    fleet: Fleet
    store: KeyStore
    backends: list[FakeUpstream]
    redis: Any
    prefix: str

    def ejected(self, backend: FakeUpstream) -> bool:
        """Whether a replica published `backend`'s ejection in Redis."""
        return any(self.redis.pttl(name) > 0 for name in ejection_keys(self.prefix, backend))


def ejection_keys(prefix: str, backend: FakeUpstream) -> list[str]:
    """app/routing/shared.py's key for `backend`: under REDIS_PREFIX once the router hands it the prefix,
    under `cot-proxy:` until then."""
    return [p + "ejected:" + backend.base_url for p in (prefix, "cot-proxy:")]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, fleet_redis, fleet_database, backends) -> Iterator[FleetUnderTest]:
    import redis

    tools.command("nginx", "nginx-light")  # skip early, before three replicas start, if it is missing
    redis_url, prefix = fleet_redis
    where: Path = tmp_path_factory.mktemp("fleet")
    config = where / "config.yaml"
    config.write_text(f"""
providers:
  pool:
    balance: round_robin
    retries: 1
    failure_threshold: {FAILURE_THRESHOLD}
    cooldown_seconds: 30
    backends: [{{base_url: '{backends[0].base_url}'}}, {{base_url: '{backends[1].base_url}'}}]
""")
    store = KeyStore(fleet_database)
    store.ensure_schema()  # once, before three replicas would race to create it
    env = {
        "COT_PROXY_CONFIG": str(config),
        "VIRTUAL_KEYS": "true",
        "DATABASE_URL": fleet_database,
        "REDIS_URL": redis_url,
        "REDIS_PREFIX": prefix,
        "USAGE_FLUSH_SECONDS": "0.2",
        "GUNICORN_GRACEFUL_TIMEOUT": str(GRACEFUL),
        "REQUEST_TIMEOUT_SECONDS": "20",
    }
    client = redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
    f = Fleet(where, env)
    try:
        yield FleetUnderTest(f, store, backends, client, prefix)
    finally:
        f.stop()
        store.close()
        client.delete(*(name for b in backends for name in ejection_keys(prefix, b)))
        client.close()

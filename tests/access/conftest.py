"""Fixtures for the access tests: a real Redis, SQLite and PostgreSQL key stores, apps with access settings.

Redis: TEST_REDIS_URL (default redis://127.0.0.1:6379/15). Each test gets its own
key prefix and every key under it is deleted after the test: a flush of the
test's whole keyspace that leaves concurrent test runs on the same Redis alone.
A missing Redis or PostgreSQL skips those tests locally and fails them under CI=true.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from app import create_app
from app.access.settings import AccessSettings
from app.access.store import KeyStore
from tests.fakes.openai_upstream import FakeUpstream
from tests.support import TEST_PG_URL, TEST_REDIS_URL, RedisServer, pg_url, proxy_config, unavailable


@pytest.fixture(scope="session")
def _redis_client():
    import redis

    client = redis.Redis.from_url(TEST_REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError:
        unavailable(f"Redis at {TEST_REDIS_URL}")
    yield client
    client.close()


@pytest.fixture
def redis_prefix(_redis_client) -> Iterator[str]:
    prefix = f"cot-proxy-test:{uuid.uuid4().hex[:12]}:"
    yield prefix
    keys = list(_redis_client.scan_iter(match=prefix + "*", count=1000))
    if keys:
        _redis_client.delete(*keys)


@pytest.fixture
def redis_settings(redis_prefix: str) -> dict[str, object]:
    return {"redis_url": TEST_REDIS_URL, "redis_prefix": redis_prefix}


@pytest.fixture(scope="session")
def _pg_schema() -> Iterator[str]:
    """A schema of our own in the test database, dropped at the end."""
    try:
        import psycopg

        conn = psycopg.connect(TEST_PG_URL, connect_timeout=3, autocommit=True)
    except Exception:
        unavailable(f"PostgreSQL at {TEST_PG_URL}")
    schema = f"cot_test_{uuid.uuid4().hex[:10]}"
    conn.execute(f"CREATE SCHEMA {schema}")
    yield schema
    conn.execute(f"DROP SCHEMA {schema} CASCADE")
    conn.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path: Path) -> Iterator[str]:
    """The key store's URL, once for SQLite and once for PostgreSQL; tables are emptied after each test."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'keys.db'}"
        return
    url = pg_url(request.getfixturevalue("_pg_schema"))
    yield url
    store = KeyStore(url)
    store.ensure_schema()
    with store.engine.begin() as conn:
        conn.exec_driver_sql("TRUNCATE cot_usage, cot_api_keys RESTART IDENTITY")
    store.close()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'keys.db'}"


@pytest.fixture
def store_at():
    """Open key stores by URL, closed after the test."""
    stores: list[KeyStore] = []

    def open_store(url: str) -> KeyStore:
        store = KeyStore(url)
        stores.append(store)
        return store

    yield open_store
    for s in stores:
        s.close()


@pytest.fixture
def make_app(upstream: FakeUpstream):
    """create_app with access settings changed from the defaults; usage writers closed after the test."""
    apps = []

    def build(**access: object):
        config = proxy_config(upstream)
        app = create_app(replace(config, access=replace(AccessSettings(), **access)))
        apps.append(app)
        return app

    yield build
    from app.access.api import find_guard

    for app in apps:
        guard = find_guard(app)
        if guard is not None:
            guard.close()


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    from shutil import which

    if which("redis-server") is None:
        unavailable("redis-server binary")
    server = RedisServer().start()
    yield server
    server.stop()

"""Fixtures for the fuzz tests: the app in echo mode, in proxy mode and with authentication on.

Proxy and auth modes relay to a real fake upstream of the module's own (tests/conftest.py
`module_upstream`), made fit for thousands of requests by `support.prepare_upstream`.

FUZZ_SCALE (default 1) multiplies every fuzz test's number of examples, for a longer
local run: `FUZZ_SCALE=20 python -m pytest tests/fuzz -q`. The cases are the same on every
run (derandomized); FUZZ_RANDOM=1 draws new ones (reproduce with pytest's `--hypothesis-seed`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from app import create_app
from tests.fakes.openai_upstream import FakeUpstream
from tests.fuzz import support
from tests.fuzz.support import SECONDS, Target
from tests.support import TEST_PG_URL, pg_url, unavailable


@pytest.fixture(scope="module")
def fuzz_upstream(module_upstream: FakeUpstream) -> Iterator[FakeUpstream]:
    yield support.prepare_upstream(module_upstream)
    module_upstream.reset()


@pytest.fixture(scope="module")
def targets(fuzz_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Target]]:
    """echo: no upstream; proxy: one transparent upstream; auth: proxy with every kind of credential
    on; routed: two providers from a config file (prefix affinity, retries, an alias) with
    LLM_PARAMS overrides and THINK_MODE=separate, so the transforms see every body too."""
    tmp = tmp_path_factory.mktemp("fuzz")
    built = {
        "echo": Target("echo", create_app(support.echo_config())),
        "proxy": Target("proxy", create_app(support.relay_config(fuzz_upstream))),
        "auth": Target("auth", create_app(support.auth_config(fuzz_upstream, f"sqlite:///{tmp / 'keys.db'}"))),
        "routed": Target("routed", create_app(support.routed_config(fuzz_upstream, tmp / "config.yaml"))),
    }
    yield built
    support.close_apps(*(t.app for t in built.values()))


@pytest.fixture(scope="module")
def postgresql_url() -> Iterator[str]:
    """A schema of our own in the test PostgreSQL (TEST_DATABASE_URL, as tests/access uses), dropped after."""
    import uuid

    try:
        import psycopg

        conn = psycopg.connect(TEST_PG_URL, connect_timeout=3, autocommit=True)
    except Exception:
        unavailable(f"PostgreSQL at {TEST_PG_URL}")
    schema = f"cot_fuzz_{uuid.uuid4().hex[:10]}"
    conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield pg_url(schema)
    finally:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")
        conn.close()


@pytest.fixture(autouse=True)
def _count_time(request: pytest.FixtureRequest) -> Iterator[None]:
    started = time.perf_counter()
    yield
    SECONDS[request.node.nodeid] += time.perf_counter() - started

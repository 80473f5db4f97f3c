"""Shared fixtures: a real fake upstream, the app in proxy and echo mode, a live HTTP server.

Fixtures only: helpers (`proxy_config`, `LiveServer`, `Gunicorn`, ...) are in tests/support.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from app import create_app
from app.config import Config
from tests.fakes.openai_upstream import FakeUpstream
from tests.support import LiveServer, proxy_config  # helpers live in tests/support.py; import them from there


@pytest.fixture(scope="session")
def _upstream_server() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def module_upstream() -> Iterator[FakeUpstream]:
    """A fake upstream of the module's own, for module-scoped proxies (Gunicorn)."""
    server = FakeUpstream().start()
    yield server
    server.stop()


@pytest.fixture
def upstream(_upstream_server: FakeUpstream) -> FakeUpstream:
    _upstream_server.reset()
    return _upstream_server


@pytest.fixture
def app(upstream: FakeUpstream):
    return create_app(proxy_config(upstream))


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def echo_client():
    return create_app(Config()).test_client()


@pytest.fixture
def live(app) -> Iterator[LiveServer]:
    server = LiveServer(app)
    yield server
    server.stop()


@pytest.fixture
def live_echo() -> Iterator[LiveServer]:
    server = LiveServer(create_app(Config()))
    yield server
    server.stop()

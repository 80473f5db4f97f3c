"""Shared fixtures: a real fake upstream, the app in proxy and echo mode, a live HTTP server."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace

import openai
import pytest
from werkzeug.serving import make_server

from app import create_app
from app.config import Config
from tests.fakes.openai_upstream import FakeUpstream


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


def proxy_config(upstream: FakeUpstream, **changes: object) -> Config:
    base = Config(target_base_url=upstream.base_url, connect_timeout=2.0, read_timeout=5.0, health_cache_seconds=0)
    return replace(base, **changes)


@pytest.fixture
def app(upstream: FakeUpstream):
    return create_app(proxy_config(upstream))


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def echo_client():
    return create_app(Config()).test_client()


class LiveServer:
    """The app on a real threaded HTTP server on 127.0.0.1, for real clients."""

    def __init__(self, app) -> None:
        self._server = make_server("127.0.0.1", 0, app, threaded=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    def sdk(self, **kw: object) -> openai.OpenAI:
        kw.setdefault("max_retries", 0)
        kw.setdefault("timeout", 10.0)
        return openai.OpenAI(base_url=self.url + "/v1", api_key="sk-client-key", **kw)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


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

"""Fixtures for the translation tests: the chat-only fake upstream and apps in front of it."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from app import create_app
from app.access.store import KeyStore
from app.config import Config
from tests.fakes.chat_only_upstream import ChatOnlyUpstream


@pytest.fixture(scope="session")
def _chat_only_server() -> Iterator[ChatOnlyUpstream]:
    server = ChatOnlyUpstream().start()
    yield server
    server.stop()


@pytest.fixture
def chat_only(_chat_only_server: ChatOnlyUpstream) -> ChatOnlyUpstream:
    _chat_only_server.reset()
    return _chat_only_server


def config_for(upstream: ChatOnlyUpstream, **env: str) -> Config:
    """A config as the environment would give it (no .env, no config.yaml)."""
    return Config.from_env(
        {"TARGET_BASE_URL": upstream.base_url, "REQUEST_TIMEOUT_SECONDS": "10", "CONNECT_TIMEOUT_SECONDS": "2", **env}
    )


@pytest.fixture
def make_client(chat_only: ChatOnlyUpstream) -> Callable[..., object]:
    """`make_client(RESPONSES_API="translate", ...)`: a Flask test client in front of the chat-only fake."""

    def make(**env: str):
        return create_app(config_for(chat_only, **env)).test_client()

    return make


@pytest.fixture(scope="module")
def fake() -> Iterator[ChatOnlyUpstream]:
    """A chat-only fake of the module's own, for a Gunicorn proxy that lives as long as the module."""
    server = ChatOnlyUpstream().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def keys(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[KeyStore, str, str]]:
    """A virtual-key store (SQLite) holding one key named by the module's `KEY_NAME`: (store, key, url)."""
    name = getattr(request.module, "KEY_NAME", "client")
    url = f"sqlite:///{tmp_path_factory.mktemp(name) / 'keys.db'}"
    store = KeyStore(url)
    secret, _ = store.create(name)
    yield store, secret, url
    store.close()

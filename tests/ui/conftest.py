"""Fixtures for the console tests: an app with ADMIN_TOKEN and virtual keys over a fake upstream, a logged-in client."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from app import create_app
from app.access.settings import AccessSettings
from tests.fakes.openai_upstream import FakeUpstream
from tests.support import proxy_config

ADMIN = "ui-admin-token-0123456789abcdef"
CSRF_META = re.compile(r'<meta name="csrf-token" content="([^"]*)">')
CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')


def ui_config(upstream: FakeUpstream | None, db: Path, **access: object):
    fields = {
        "admin_token": ADMIN,
        "virtual_keys": True,
        "usage_accounting": True,
        "usage_flush_seconds": 0.1,
        "database_url": f"sqlite:///{db}",
        **access,
    }
    settings = AccessSettings(**fields)
    if upstream is None:
        from app.config import Config

        return Config(access=settings)
    return replace(proxy_config(upstream), access=settings)


@pytest.fixture
def ui_app(upstream: FakeUpstream, tmp_path: Path):
    app = create_app(ui_config(upstream, tmp_path / "keys.db"))
    yield app
    app.extensions["cot_proxy.ui.sampler"].stop()


def login(client: FlaskClient, token: str = ADMIN) -> tuple[int, str]:
    """Log in through the form; returns the answer's status and the CSRF token of the next page."""
    page = client.get("/ui/login")
    csrf = CSRF_FIELD.search(page.get_data(as_text=True)).group(1)
    r = client.post("/ui/login", data={"token": token, "csrf_token": csrf, "next": "/ui/"})
    if r.status_code != 303:
        return r.status_code, ""
    home = client.get("/ui/")
    return r.status_code, CSRF_META.search(home.get_data(as_text=True)).group(1)


@pytest.fixture
def admin(ui_app) -> Iterator[tuple[FlaskClient, str]]:
    client = ui_app.test_client()
    status, csrf = login(client)
    assert status == 303
    yield client, csrf

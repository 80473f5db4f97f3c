"""Every /ui/ route and method, through real Gunicorn, with every kind of credential (the style of
tests/integration/test_trust_auth.py): only the login page and static files are open; the proxy's own
client credentials (GATEWAY_BEARER_TOKEN) never open the console; nothing answers 500; the upstream
never hears of any of it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from app import create_app
from tests.fakes.openai_upstream import FakeUpstream
from tests.support import Gunicorn, raw_request
from tests.ui.conftest import ADMIN, ui_config

GATEWAY = "gateway-client-token-0123456789"
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
CREDENTIALS = {
    "none": {},
    "gateway token": {"Authorization": f"Bearer {GATEWAY}"},
    "wrong admin": {"Authorization": "Bearer not-the-admin-token-0123"},
    "forged cookie": {"Cookie": "cot_ui_session=v1.1900000000.nonce.0000"},
    "admin bearer": {"Authorization": f"Bearer {ADMIN}"},
}
OPEN = {
    ("GET", "/ui/login"),
    ("HEAD", "/ui/login"),
    ("POST", "/ui/login"),
    ("GET", "/ui/static/ui.js"),
    ("HEAD", "/ui/static/ui.js"),
}
EXTRA = (
    "/ui",
    "/ui/api/",
    "/ui/api/nothing",
    "/ui/static/../views.py",
    "/ui/static/%2e%2e/views.py",
    "/ui//api/keys",
    "/ui/api/keys/1/revoke/",
)


def _paths(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    app = create_app(ui_config(None, tmp_path_factory.mktemp("inv") / "k.db"))
    app.extensions["cot_proxy.ui.sampler"].stop()
    out = []
    for rule in app.url_map.iter_rules():
        path = str(rule)
        if path.startswith("/ui"):
            out.append(
                path.replace("<int:key_id>", "1").replace("<live_id>", "1-1").replace("<path:filename>", "ui.js")
            )
    return sorted(set(out)) + list(EXTRA)


@pytest.fixture(scope="module")
def proxy(module_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gunicorn]:
    db = tmp_path_factory.mktemp("ui-auth") / "keys.db"
    g = Gunicorn(
        {
            "TARGET_BASE_URL": module_upstream.base_url,
            "ADMIN_TOKEN": ADMIN,
            "GATEWAY_BEARER_TOKEN": GATEWAY,
            "DATABASE_URL": f"sqlite:///{db}",
        },
        workers=1,
    )
    yield g
    g.stop()


def test_every_ui_route_method_and_credential(
    proxy: Gunicorn, module_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> None:
    paths = _paths(tmp_path_factory)
    assert "/ui/api/keys" in paths and "/ui/" in paths
    module_upstream.reset()
    for path in paths:
        for method in METHODS:
            for name, headers in CREDENTIALS.items():
                body = b"{}" if method in ("POST", "PUT", "PATCH") else None
                h = {**headers, "Content-Type": "application/json"} if body else dict(headers)
                r = raw_request(proxy.port, method, path, h, body)
                where = f"{method} {path} ({name}) -> {r.status} {r.body[:160]!r}"
                assert r.status < 500, where
                for secret in (ADMIN, GATEWAY):
                    assert secret.encode() not in r.body, where
                if (method, path) in OPEN:
                    assert r.status in (200, 403), where  # 403: the login form's CSRF check
                    continue
                admin_api = name == "admin bearer" and path.startswith("/ui/api/")
                if admin_api and r.status in (200, 201, 202):
                    assert method in ("GET", "HEAD", "POST"), where
                    continue
                if path == "/ui" and r.status == 308:  # Werkzeug's slash redirect to /ui/, guarded itself
                    assert r.headers["location"].endswith("/ui/"), where
                    continue
                # Pages redirect to the login, JSON and every other method are refused; unknown paths 404/405.
                assert r.status in (303, 401, 403, 404, 405, 400), where
                if r.status == 303:
                    assert method in ("GET", "HEAD") and not path.startswith("/ui/api/"), where
                    assert r.headers.get("location", "").startswith("/ui/login"), where
    assert not [rec for rec in module_upstream.requests if rec.path.startswith("/ui")]

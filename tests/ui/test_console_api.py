"""The console's JSON endpoints and its login, through Flask's test client against a fake upstream.

Fail closed everywhere: no ADMIN_TOKEN = no route; no cookie, a forged or expired cookie, a wrong
token, a missing CSRF token: refused (401/403, pages redirect to the login), never a 500.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from app import create_app
from app.config import Config
from app.ui import auth
from tests.fakes.openai_upstream import FakeUpstream
from tests.ui.conftest import ADMIN, CSRF_FIELD, login, ui_config

OPEN_ENDPOINTS = {"ui.login", "ui.login_post", "ui.static"}
SAMPLE = {"key_id": "1", "live_id": "1-1", "filename": "ui.css"}


def _rules(app):
    for rule in app.url_map.iter_rules():
        if str(rule).startswith("/ui"):
            path = str(rule)
            for name, value in SAMPLE.items():
                path = path.replace(f"<int:{name}>", value).replace(f"<path:{name}>", value).replace(f"<{name}>", value)
            yield rule, path


def test_off_without_admin_token() -> None:
    app = create_app(Config())
    assert not [r for r in app.url_map.iter_rules() if str(r).startswith("/ui")]
    client = app.test_client()
    for path in ("/ui/", "/ui/login", "/ui/api/keys", "/ui/static/ui.js"):
        assert client.get(path).status_code == 404, path
    assert client.post("/ui/login", data={"token": "x"}).status_code in (404, 405)


def test_every_route_is_behind_the_login_or_open_on_purpose(ui_app) -> None:
    """The route inventory: each /ui/ endpoint is either in OPEN_ENDPOINTS or wrapped by `login_required`."""
    client = ui_app.test_client()
    seen = set()
    for rule, path in _rules(ui_app):
        view = ui_app.view_functions[rule.endpoint]
        seen.add(rule.endpoint)
        if rule.endpoint in OPEN_ENDPOINTS:
            continue
        assert getattr(view, "ui_login_required", False), f"{rule} ({rule.endpoint}) is neither open nor guarded"
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            for cookie in (None, "v1.1.abc.def", auth.new_session_for(ADMIN, time.time()) + "x"):
                client.delete_cookie(auth.SESSION_COOKIE, path="/ui/")
                if cookie is not None:
                    client.set_cookie(auth.SESSION_COOKIE, cookie, path="/ui/")
                r = client.open(path, method=method)
                where = f"{method} {path} cookie={cookie!r} -> {r.status_code}"
                if method == "GET" and not path.startswith("/ui/api/"):
                    assert r.status_code == 303 and r.headers["Location"].startswith("/ui/login"), where
                else:
                    assert r.status_code == 401, where
                    assert r.get_json()["error"]["code"] == "login_required", where
    assert OPEN_ENDPOINTS <= seen


def test_login_form(ui_app) -> None:
    client = ui_app.test_client()
    assert login(client, "wrong-token-0123456789")[0] == 401
    page = client.get("/ui/login")
    assert b'lang="en"' in page.data and b'<label for="token">' in page.data
    # No or a foreign CSRF token: refused before the token is even compared.
    assert client.post("/ui/login", data={"token": ADMIN}).status_code == 403
    csrf = CSRF_FIELD.search(page.get_data(as_text=True)).group(1)
    other = ui_app.test_client()
    other.get("/ui/login")
    assert other.post("/ui/login", data={"token": ADMIN, "csrf_token": csrf}).status_code == 403
    r = client.post("/ui/login", data={"token": ADMIN, "csrf_token": csrf, "next": "//evil.example/x"})
    assert r.status_code == 303 and r.headers["Location"] == "/ui/"
    cookie = next(c for c in r.headers.getlist("Set-Cookie") if c.startswith(auth.SESSION_COOKIE + "="))
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/ui/" in cookie
    assert ADMIN not in cookie
    page = client.get("/ui/")
    assert page.status_code == 200 and ADMIN.encode() not in page.data
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]


def test_sessions_agree_across_workers_and_end_with_the_token(upstream: FakeUpstream, tmp_path: Path) -> None:
    """Two apps (two workers) with the same ADMIN_TOKEN accept each other's cookie; another token does not."""
    a = create_app(ui_config(upstream, tmp_path / "a.db"))
    b = create_app(ui_config(upstream, tmp_path / "b.db"))
    other = create_app(ui_config(upstream, tmp_path / "c.db", admin_token="another-admin-token-0123456789"))
    ca = a.test_client()
    assert login(ca)[0] == 303
    cookie = ca.get_cookie(auth.SESSION_COOKIE, path="/ui/").value
    for app, want in ((b, 200), (other, 401)):
        c = app.test_client()
        c.set_cookie(auth.SESSION_COOKIE, cookie, path="/ui/")
        assert c.get("/ui/api/live").status_code == want
    expired = a.test_client()
    with a.test_request_context():
        old = auth.new_session(time.time() - auth.SESSION_SECONDS - 5)
    expired.set_cookie(auth.SESSION_COOKIE, old, path="/ui/")
    assert expired.get("/ui/api/live").status_code == 401
    for app in (a, b, other):
        app.extensions["cot_proxy.ui.sampler"].stop()


def test_state_changes_need_the_csrf_token(admin) -> None:
    client, csrf = admin
    assert client.post("/ui/api/keys", json={"name": "k"}).status_code == 403
    r = client.post("/ui/api/keys", json={"name": "k"}, headers={"X-CSRF-Token": "0" * 64})
    assert r.status_code == 403 and r.get_json()["error"]["code"] == "csrf_failed"
    assert client.post("/ui/logout").status_code == 403
    assert client.post("/ui/logout", data={"csrf_token": csrf}).status_code == 303
    assert client.get("/ui/api/keys").status_code == 401  # the cookie is gone


def test_bearer_admin_token_for_scripts(ui_app) -> None:
    client = ui_app.test_client()
    assert client.get("/ui/api/config", headers={"Authorization": "Bearer wrong-0123456789"}).status_code == 401
    r = client.get("/ui/api/config", headers={"Authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 200
    # Bearer calls carry no cookie a browser could send on its own: no CSRF token needed.
    r = client.post("/ui/api/keys", json={"name": "script"}, headers={"Authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 201


def test_overview_series(admin) -> None:
    client, _ = admin
    for span in ("hour", "day"):
        d = client.get(f"/ui/api/overview?span={span}").get_json()
        assert d["span"] == span and isinstance(d["points"], list)
        assert {"requests", "errors", "tokens_in", "tokens_out"} <= set(d["totals"])
    r = client.get("/ui/api/overview?span=week")
    assert r.status_code == 400 and r.get_json()["error"]["param"] == "span"


def test_backends_lists_the_upstream(admin, upstream: FakeUpstream) -> None:
    client, csrf = admin
    key = client.post("/ui/api/keys", json={"name": "b"}, headers={"X-CSRF-Token": csrf}).get_json()["key"]
    r = client.post(
        "/v1/chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert r.status_code == 200
    r.close()  # the relay's done hooks run when the answer is closed
    d = client.get("/ui/api/backends").get_json()
    assert not d["echo_mode"] and d["workers"] == 1
    (backend,) = [b for p in d["providers"] for b in p["backends"]]
    assert backend["healthy"] and backend["in_flight"] == 0 and backend["requests"] >= 1
    assert backend["latency_p50_ms"] is not None
    assert upstream.base_url.startswith(backend["origin"])


def test_keys_create_edit_revoke_and_the_proxy_refuses(admin) -> None:
    client, csrf = admin
    h = {"X-CSRF-Token": csrf}
    r = client.post("/ui/api/keys", json={"name": "ops", "rpm": "100", "models": "m, other*"}, headers=h)
    assert r.status_code == 201
    created = r.get_json()
    secret, key_id = created["key"], created["record"]["id"]
    assert secret.startswith("sk-cp-") and created["record"]["rpm"] == 100
    listing = client.get("/ui/api/keys").get_json()
    assert secret not in str(listing) and listing["virtual_keys"] is True
    assert [k["models"] for k in listing["keys"] if k["id"] == key_id] == [["m", "other*"]]
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    r = client.post("/v1/chat/completions", json=chat, headers={"Authorization": f"Bearer {secret}"})
    assert r.status_code == 200
    r.close()  # the done hooks (usage record) run at close

    r = client.post(f"/ui/api/keys/{key_id}/limits", json={"rpm": 5, "budget": "", "tpm": 0}, headers=h)
    assert r.status_code == 200 and r.get_json()["record"]["rpm"] == 5 and r.get_json()["record"]["tpm"] is None
    for bad in ({"rpm": -1}, {"rpm": "lots"}, {"budget": True}, {"tpm": 1.5}):
        r = client.post(f"/ui/api/keys/{key_id}/limits", json=bad, headers=h)
        assert r.status_code == 400, bad
    assert client.post("/ui/api/keys/999/limits", json={"rpm": 1}, headers=h).status_code == 404
    assert client.post("/ui/api/keys", json={"name": ""}, headers=h).status_code == 400
    assert client.post("/ui/api/keys", json=["x"], headers=h).status_code == 400

    r = client.post(f"/ui/api/keys/{key_id}/revoke", headers=h)
    assert r.status_code == 200 and r.get_json()["record"]["status"] == "revoked"
    assert client.post("/ui/api/keys/999/revoke", headers=h).status_code == 404
    deadline = time.monotonic() + 5  # the guard trusts a looked-up key for KEY_CACHE_SECONDS
    while True:
        r = client.post("/v1/chat/completions", json=chat, headers={"Authorization": f"Bearer {secret}"})
        status = r.status_code
        r.close()
        if status == 401 or time.monotonic() > deadline:
            break
        time.sleep(0.1)  # polling the proxy's answer, bounded by the deadline
    assert status == 401
    usage = client.get("/ui/api/keys").get_json()["usage"]
    assert any(u["key"] == "ops" and u["model"] == "m" and u["requests"] >= 1 for u in usage)


def test_live_lists_and_refuses_unknown_cancels(admin) -> None:
    client, csrf = admin
    d = client.get("/ui/api/live").get_json()
    assert d == {"workers": 1, "requests": [], "enabled": True}
    for live_id in ("1-1", "x" * 100, "..-..", "0"):
        r = client.post(f"/ui/api/live/{live_id}/cancel", headers={"X-CSRF-Token": csrf})
        assert r.status_code == 404, live_id


def test_config_masks_secrets(upstream: FakeUpstream, tmp_path: Path) -> None:
    from dataclasses import replace

    config = ui_config(upstream, tmp_path / "k.db")
    config = replace(
        config,
        upstream_api_key="sk-upstream-secret-0123456789",
        target_base_url="http://user:pw-secret-123@127.0.0.1:9/v1/?token=qs-secret-456",
    )
    app = create_app(config)
    client = app.test_client()
    assert login(client)[0] == 303
    r = client.get("/ui/api/config")
    text = r.get_data(as_text=True)
    assert r.status_code == 200
    for secret in (ADMIN, "sk-upstream-secret-0123456789", "pw-secret-123", "qs-secret-456"):
        assert secret not in text
    d = r.get_json()
    assert d["config"]["upstream_api_key"] == "***" and d["config"]["access"]["admin_token"] == "***"
    for page in ("/ui/", "/ui/backends", "/ui/keys", "/ui/live", "/ui/config"):
        body = client.get(page)
        assert body.status_code == 200 and ADMIN.encode() not in body.data, page
    app.extensions["cot_proxy.ui.sampler"].stop()


def test_admin_allowed_ips_cover_the_console(upstream: FakeUpstream, tmp_path: Path) -> None:
    from app.clientip import parse_networks

    app = create_app(
        ui_config(upstream, tmp_path / "k.db", admin_allowed_ips=parse_networks("10.0.0.0/8", "ADMIN_ALLOWED_IPS"))
    )
    client = app.test_client()
    for path in ("/ui/login", "/ui/", "/ui/api/keys", "/ui/static/ui.js"):
        r = client.get(path)
        assert r.status_code == 403 and r.get_json()["error"]["code"] == "ip_not_allowed", path
    app.extensions["cot_proxy.ui.sampler"].stop()


@pytest.mark.parametrize("page", ["overview", "backends", "keys", "live", "config"])
def test_pages_have_labels_and_landmarks(admin, page: str) -> None:
    client, _ = admin
    body = client.get("/ui/" if page == "overview" else f"/ui/{page}").get_data(as_text=True)
    assert '<html lang="en">' in body and '<main id="main"' in body and 'aria-current="page"' in body
    assert 'class="skip"' in body
    # every input has a label (by id) or is hidden
    import re

    for m in re.finditer(r"<input([^>]*)>", body):
        attrs = m.group(1)
        if 'type="hidden"' in attrs or 'type="radio"' in attrs:
            continue
        ident = re.search(r'id="([^"]+)"', attrs).group(1)
        assert f'for="{ident}"' in body, f"{page}: input {ident} has no label"


def test_wrong_tokens_are_throttled(ui_app) -> None:
    client = ui_app.test_client()
    statuses = [login(client, f"wrong-token-{i:02d}-0123456789")[0] for i in range(auth.LOGIN_FAILURES + 1)]
    assert statuses == [401] * auth.LOGIN_FAILURES + [429]
    page = client.get("/ui/login")
    csrf = CSRF_FIELD.search(page.get_data(as_text=True)).group(1)
    r = client.post("/ui/login", data={"token": ADMIN, "csrf_token": csrf})
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1  # the right token waits too


def test_echo_mode_with_embedded_state_only(tmp_path: Path) -> None:
    """No upstream, no Redis: every page and endpoint answers; Backends says echo mode; Live shows echo."""
    app = create_app(ui_config(None, tmp_path / "k.db"))
    client = app.test_client()
    _, csrf = login(client)
    key = client.post("/ui/api/keys", json={"name": "echo"}, headers={"X-CSRF-Token": csrf}).get_json()["key"]
    r = client.post(
        "/v1/chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert r.status_code == 200
    r.close()
    for page in ("/ui/", "/ui/backends", "/ui/keys", "/ui/live", "/ui/config"):
        assert client.get(page).status_code == 200, page
    assert client.get("/ui/api/backends").get_json() == {"workers": 1, "providers": [], "echo_mode": True}
    assert client.get("/ui/api/overview").get_json()["totals"]["requests"] >= 1
    assert client.get("/ui/api/live").get_json()["requests"] == []
    assert client.get("/ui/api/config").status_code == 200
    app.extensions["cot_proxy.ui.sampler"].stop()


def test_cookies_are_secure_over_https_or_behind_a_trusted_proxy(upstream: FakeUpstream, tmp_path: Path) -> None:
    from app.clientip import parse_networks

    trusted = parse_networks("127.0.0.1/32", "TRUSTED_PROXIES")
    app = create_app(ui_config(upstream, tmp_path / "k.db", trusted_proxies=trusted))
    client = app.test_client()
    plain = client.get("/ui/login").headers["Set-Cookie"]
    forwarded = client.get("/ui/login", headers={"X-Forwarded-Proto": "https"}).headers["Set-Cookie"]
    tls = client.get("/ui/login", base_url="https://localhost").headers["Set-Cookie"]
    assert "Secure" not in plain and "Secure" in forwarded and "Secure" in tls
    untrusted = create_app(ui_config(upstream, tmp_path / "k2.db"))  # no TRUSTED_PROXIES: the header is not believed
    assert (
        "Secure"
        not in untrusted.test_client().get("/ui/login", headers={"X-Forwarded-Proto": "https"}).headers["Set-Cookie"]
    )
    for a in (app, untrusted):
        a.extensions["cot_proxy.ui.sampler"].stop()

"""The Nexus gateway's variables, as its users set them: METRICS_ENABLED (false: no /metrics
anywhere), USER_DB_PATH (the key store's SQLite file when DATABASE_URL is unset), and IP
allow-lists for the sensitive endpoints (METRICS_ALLOWED_IPS, ADMIN_ALLOWED_IPS) with
TRUSTED_PROXIES deciding when X-Forwarded-For is believed. In-process first, then real Gunicorn
(real sockets, so the peer address is the real one) with the `keys` CLI writing USER_DB_PATH."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import requests
from flask import Blueprint

from app import create_app
from app.access.api import admin_allowlist
from app.clientip import guard_blueprint
from app.config import Config, ConfigError
from tests.seeds.tools import http
from tests.support import ISOLATED, ROOT, Gunicorn, free_port

ADMIN = "admin-token-0123456789abcdef"
MSG = [{"role": "user", "content": "hello"}]


def error_of(resp) -> dict:
    body = resp.get_json() if hasattr(resp, "get_json") else resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


# -- settings ---------------------------------------------------------------------------------------


def test_metrics_enabled_switch():
    on = Config.from_env({"OBSERVABILITY_PORT": "8801"}).observability
    assert on.metrics_enabled and on.metrics_on_main_port and on.port == 8801
    off = Config.from_env({"METRICS_ENABLED": "false", "OBSERVABILITY_PORT": "8801"}).observability
    assert not off.metrics_enabled and not off.metrics_on_main_port and off.port is None
    with pytest.raises(ConfigError, match="^METRICS_ENABLED='maybe'"):
        Config.from_env({"METRICS_ENABLED": "maybe"})


def test_user_db_path_is_the_key_store_file_unless_database_url(tmp_path):
    assert Config.from_env({"USER_DB_PATH": "/data/users.sqlite"}).access.database_url == "sqlite:////data/users.sqlite"
    assert Config.from_env({"USER_DB_PATH": "data/users.sqlite"}).access.database_url == "sqlite:///data/users.sqlite"
    both = Config.from_env({"USER_DB_PATH": "/data/users.sqlite", "DATABASE_URL": "postgresql://db/keys"})
    assert both.access.database_url == "postgresql://db/keys"
    assert Config.from_env({}).access.database_url == "sqlite:///data/cot-proxy.db"
    with pytest.raises(ConfigError, match="^USER_DB_PATH="):
        Config.from_env({"USER_DB_PATH": "users.sqlite?mode=ro"})


# -- in process -------------------------------------------------------------------------------------


def get(app, path, peer, **headers):
    return app.test_client().get(path, environ_base={"REMOTE_ADDR": peer}, headers=headers)


def test_metrics_disabled_is_not_found():
    app = create_app(Config.from_env({"METRICS_ENABLED": "false"}))
    assert get(app, "/metrics", "127.0.0.1").status_code == 404
    assert get(create_app(Config.from_env({})), "/metrics", "127.0.0.1").status_code == 200


def test_metrics_allow_list_uses_the_peer_by_default():
    app = create_app(Config.from_env({"METRICS_ALLOWED_IPS": "10.0.0.0/8, 2001:db8::/32"}))
    assert get(app, "/metrics", "10.9.8.7").status_code == 200
    assert get(app, "/metrics", "2001:db8::1").status_code == 200
    refused = get(app, "/metrics", "127.0.0.1", **{"X-Forwarded-For": "10.9.8.7", "X-Request-ID": "rid-1"})
    assert refused.status_code == 403 and refused.headers["X-Request-ID"] == "rid-1"
    err = error_of(refused)
    assert err["code"] == "ip_not_allowed" and "127.0.0.1" in err["message"] and "METRICS_ALLOWED_IPS" in err["message"]
    assert get(app, "/healthz", "127.0.0.1").status_code == 200  # only the listed endpoints are guarded


def test_trusted_proxies_decide_when_forwarded_for_counts():
    app = create_app(Config.from_env({"METRICS_ALLOWED_IPS": "10.0.0.0/8", "TRUSTED_PROXIES": "127.0.0.1"}))
    assert get(app, "/metrics", "127.0.0.1", **{"X-Forwarded-For": "10.9.8.7"}).status_code == 200
    assert get(app, "/metrics", "127.0.0.1").status_code == 403  # the proxy itself is not listed
    assert get(app, "/metrics", "127.0.0.1", **{"X-Forwarded-For": "10.9.8.7, 203.0.113.9"}).status_code == 403
    assert get(app, "/metrics", "192.0.2.1", **{"X-Forwarded-For": "10.9.8.7"}).status_code == 403  # untrusted peer


def test_usage_allow_list_comes_before_the_token():
    app = create_app(Config.from_env({"ADMIN_TOKEN": ADMIN, "ADMIN_ALLOWED_IPS": "192.168.0.0/16"}))
    c = app.test_client()
    outside = c.get(
        "/v1/usage", environ_base={"REMOTE_ADDR": "127.0.0.1"}, headers={"Authorization": f"Bearer {ADMIN}"}
    )
    assert outside.status_code == 403 and error_of(outside)["code"] == "ip_not_allowed"
    inside = {"REMOTE_ADDR": "192.168.4.2"}
    assert c.get("/v1/usage", environ_base=inside).status_code == 401
    assert c.get("/v1/usage", environ_base=inside, headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 200


def test_allow_list_is_reusable_for_a_blueprint():
    """What a console or keys API would do: one call guards every endpoint of its blueprint."""
    app = create_app(Config.from_env({"ADMIN_ALLOWED_IPS": "10.0.0.0/8"}))
    console = Blueprint("console", __name__)

    @console.get("/console/")
    def index():
        return {"console": True}

    guard_blueprint(console, admin_allowlist)
    app.register_blueprint(console)
    assert get(app, "/console/", "10.1.1.1").get_json() == {"console": True}
    assert error_of(get(app, "/console/", "172.16.0.1"))["code"] == "ip_not_allowed"


# -- real Gunicorn ----------------------------------------------------------------------------------


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in ISOLATED}
    full.update(env)
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "cot_proxy", "keys", *args],
        cwd=ROOT,
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
    )


def logged(g: Gunicorn, request_id: str, within: float = 10.0) -> dict:
    """The access log line of `request_id`, once Gunicorn has written it."""
    deadline = time.monotonic() + within
    while True:
        found = [line for line in g.lines() if line.get("request_id") == request_id and "status" in line]
        if found or time.monotonic() > deadline:
            assert found, f"no log line for {request_id}"
            return found[-1]
        time.sleep(0.05)  # polling a file the server appends to; bounded by the deadline


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def nexus(tmp_path_factory) -> Iterator[tuple[Gunicorn, dict[str, str], str]]:
    db = tmp_path_factory.mktemp("nexus") / "data" / "users.sqlite"
    env = {
        "VIRTUAL_KEYS": "true",
        "USER_DB_PATH": str(db),
        "ADMIN_TOKEN": ADMIN,
        "METRICS_ENABLED": "false",
        "OBSERVABILITY_PORT": str(free_port()),
        "ADMIN_ALLOWED_IPS": "127.0.0.1",
        "TRUSTED_PROXIES": "127.0.0.1",
        "USAGE_FLUSH_SECONDS": "0.2",
    }
    made = cli(env, "create", "--name", "nexus-team")
    assert made.returncode == 0, made.stderr
    assert db.is_file()  # the CLI wrote the key store where USER_DB_PATH says
    g = Gunicorn(env, workers=1)
    yield g, env, made.stdout.strip()
    log = g.stop()
    assert "Traceback" not in log, log


def test_gunicorn_metrics_disabled_everywhere(nexus):
    g, env, _ = nexus
    assert requests.get(g.url + "/metrics", timeout=10).status_code == 404
    assert not port_open(int(env["OBSERVABILITY_PORT"]))  # no metrics listener either


def test_gunicorn_user_db_path_keys_and_admin_allow_list(nexus):
    g, env, key = nexus
    assert (
        requests.post(g.url + "/v1/chat/completions", json={"model": "m", "messages": MSG}, timeout=10).status_code
        == 401
    )
    ok = requests.post(
        g.url + "/v1/chat/completions",
        json={"model": "m", "messages": MSG},
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] == "Echo: hello"
    admin = {"Authorization": f"Bearer {ADMIN}"}
    usage = requests.get(g.url + "/v1/usage", headers=admin, timeout=10)  # peer 127.0.0.1, no header
    assert usage.status_code == 200 and "nexus-team" in usage.text
    listed = cli(env, "list")
    assert listed.returncode == 0 and "nexus-team" in listed.stdout
    # Behind the trusted proxy (127.0.0.1) the client it names is the one checked, and logged.
    refused = requests.get(
        g.url + "/v1/usage",
        headers={**admin, "X-Forwarded-For": "203.0.113.9", "X-Request-ID": "nexus-refused"},
        timeout=10,
    )
    assert refused.status_code == 403 and error_of(refused)["code"] == "ip_not_allowed"
    line = logged(g, "nexus-refused")  # written when the response closes: wait for it, bounded
    assert line["status"] == 403 and line["client"] == "203.0.113.9"


def test_gunicorn_metrics_allow_list_behind_a_trusted_proxy():
    g = Gunicorn({"METRICS_ALLOWED_IPS": "10.0.0.0/8", "TRUSTED_PROXIES": "127.0.0.1"}, workers=1)
    try:
        assert http("GET", g.url + "/metrics").status_code == 403
        scraped = http("GET", g.url + "/metrics", headers={"X-Forwarded-For": "10.1.2.3"})
        assert scraped.status_code == 200 and "cot_proxy_" in scraped.text
        spoofed = http("GET", g.url + "/metrics", headers={"X-Forwarded-For": "10.1.2.3, 198.51.100.7"})
        assert spoofed.status_code == 403 and "198.51.100.7" in error_of(spoofed)["message"]
        as_json = http("GET", g.url + "/metrics", headers={"X-Forwarded-For": "10.1.2.3", "Accept": "application/json"})
        assert "request_count" in json.loads(as_json.text)
    finally:
        g.stop()


def test_gunicorn_metrics_port_listener_follows_the_allow_list():
    port = free_port()
    g = Gunicorn(
        {
            "OBSERVABILITY_PORT": str(port),
            "OBSERVABILITY_HOST": "127.0.0.1",
            "METRICS_ALLOWED_IPS": "10.0.0.0/8",
            "TRUSTED_PROXIES": "127.0.0.1",
        },
        workers=1,
    )
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        refused = http("GET", url)
        assert refused.status_code == 403 and error_of(refused)["code"] == "ip_not_allowed"
        scraped = http("GET", url, headers={"X-Forwarded-For": "10.1.2.3"})
        assert scraped.status_code == 200 and "cot_proxy_" in scraped.text
        assert http("GET", url, headers={"X-Forwarded-For": "10.1.2.3, 198.51.100.7"}).status_code == 403
    finally:
        g.stop()

"""Short fixed tokens (the Nexus seed's own `GATEWAY_BEARER_TOKEN=secret`) start the proxy with a loud
warning; only tokens that cannot be meant (empty, whitespace inside) stop it. ADMIN_TOKEN alike."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest
import requests

from app import create_app
from app.access.settings import WEAK_TOKEN_CHARS, AccessSettings
from app.config import Config, ConfigError
from tests.support import Gunicorn, proxy_config

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
STRONG = "s" * WEAK_TOKEN_CHARS


def test_short_token_accepted_with_a_warning_that_hides_it():
    s = Config.from_env({"GATEWAY_BEARER_TOKEN": "secret"}).access
    assert s.bearer_tokens == ("secret",) and s.auth_enabled
    [warning] = s.warnings
    assert "GATEWAY_BEARER_TOKEN" in warning and "6 characters" in warning and "secret" not in warning
    assert AccessSettings.from_env({"GATEWAY_BEARER_TOKEN": f"{STRONG}, tok1"}).warnings[0].count("token 2 of 2") == 1
    assert AccessSettings.from_env({"GATEWAY_BEARER_TOKEN": STRONG}).warnings == ()


def test_short_admin_token_accepted_with_a_warning():
    s = AccessSettings.from_env({"ADMIN_TOKEN": "admin"})
    assert s.admin_token == "admin"
    [warning] = s.warnings
    assert "ADMIN_TOKEN" in warning and "5 characters" in warning


@pytest.mark.parametrize(
    "env, why",
    [
        ({"GATEWAY_BEARER_TOKEN": "tok-aaaaaaaaaaaaaaaa,,tok-bbbbbbbbbbbbbbbb"}, "token 2 of 3 is empty"),
        ({"GATEWAY_BEARER_TOKEN": ","}, "empty"),  # set, yet no token: never silently open
        ({"GATEWAY_BEARER_TOKEN": "secret,"}, "token 2 of 2 is empty"),
        ({"GATEWAY_BEARER_TOKEN": "qzx5 qzx6"}, "whitespace"),
        ({"GATEWAY_BEARER_TOKEN": "Bearer 0123456789abcdef"}, "Bearer"),
        ({"GATEWAY_BEARER_TOKEN": "qzx1\tqzx2"}, "whitespace"),
        ({"ADMIN_TOKEN": "qzx3 qzx4"}, "whitespace"),
    ],
)
def test_tokens_that_cannot_be_meant_are_refused(env, why):
    with pytest.raises(ConfigError, match=next(iter(env))) as err:
        Config.from_env(env)
    assert why in str(err.value)
    for value in env.values():
        for part in value.replace("\t", " ").replace(",", " ").split():
            if part != "Bearer":
                assert part not in str(err.value)  # the token itself is never echoed


def test_unset_or_blank_still_means_off():
    assert not AccessSettings.from_env({"GATEWAY_BEARER_TOKEN": "  "}).auth_enabled  # the envparse rule


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_app_warns_once_at_start_and_authenticates(upstream):
    config = replace(proxy_config(upstream), access=Config.from_env({"GATEWAY_BEARER_TOKEN": "secret"}).access)
    handler = Records()
    logger = logging.getLogger("cot_proxy.guard")  # the app's logging set-up may not propagate to the root
    logger.addHandler(handler)
    try:
        app = create_app(config)
        c = app.test_client()
        ok = c.post("/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer secret"})
        wrong = c.post("/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer secreT"})
        none = c.post("/v1/chat/completions", json=CHAT)
    finally:
        logger.removeHandler(handler)
    assert ok.status_code == 200 and wrong.status_code == 401 and none.status_code == 401
    weak = [r for r in handler.records if "WEAK CREDENTIAL" in r.getMessage()]
    assert len(weak) == 1 and weak[0].levelno == logging.WARNING


def test_gunicorn_starts_with_secret_and_authenticates(upstream):
    proxy = Gunicorn({"TARGET_BASE_URL": upstream.base_url, "GATEWAY_BEARER_TOKEN": "secret"}, workers=1)
    try:
        ok = requests.post(
            proxy.url + "/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer secret"}, timeout=10
        )
        none = requests.post(proxy.url + "/v1/chat/completions", json=CHAT, timeout=10)
        assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] == "Hello from upstream"
        assert none.status_code == 401
    finally:
        log = proxy.stop()
    assert log.count("WEAK CREDENTIAL") == 1, log  # one worker: one warning, nothing per request
    assert "Traceback" not in log

"""Authentication: fixed bearer tokens, JWT (HS256, RS256, ES256), open paths, nothing secret upstream or in logs."""

from __future__ import annotations

import logging
import time

import jwt
import openai
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.support import LiveServer

TOKEN = "gw-token-0123456789-WXYZ"
OTHER = "gw-token-other-9876-ABCD"
SECRET = "jwt-secret-0123456789abcdef-0123456789"
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def token_app(make_app):
    return make_app(bearer_tokens=(TOKEN, OTHER))


def test_bearer_token_required_and_checked(token_app, upstream):
    c = token_app.test_client()
    missing = c.post("/v1/chat/completions", json=CHAT)
    assert missing.status_code == 401 and missing.get_json()["error"]["code"] == "invalid_api_key"
    assert missing.headers["WWW-Authenticate"] == "Bearer"
    wrong = c.post("/v1/chat/completions", json=CHAT, headers=auth("gw-token-wrong-000000"))
    assert wrong.status_code == 401 and wrong.get_json()["error"]["type"] == "invalid_request_error"
    assert "0000" in wrong.get_json()["error"]["message"] and "gw-token-wrong" not in wrong.get_data(as_text=True)
    basic = c.post("/v1/chat/completions", json=CHAT, headers={"Authorization": "Basic " + TOKEN})
    assert basic.status_code == 401
    assert upstream.requests == []  # nothing refused went upstream
    for token in (TOKEN, OTHER):
        ok = c.post("/v1/chat/completions", json=CHAT, headers=auth(token))
        assert ok.status_code == 200
    # GET routes and the passthrough are guarded too
    assert c.get("/v1/models").status_code == 401
    assert c.get("/v1/files").status_code == 401
    assert c.get("/v1/models", headers=auth(TOKEN)).status_code == 200


def test_open_paths_stay_open(token_app):
    c = token_app.test_client()
    for path in ("/healthz", "/livez", "/health", "/readyz"):
        assert c.get(path).status_code == 200, path
    assert c.get("/v1/metadata").status_code != 401


def test_client_token_never_goes_upstream(make_app, upstream):
    c = make_app(bearer_tokens=(TOKEN,)).test_client()
    assert c.post("/v1/chat/completions", json=CHAT, headers=auth(TOKEN)).status_code == 200
    assert "authorization" not in upstream.last.headers
    assert TOKEN not in str(upstream.last.headers) and TOKEN.encode() not in upstream.last.body


def test_provider_key_replaces_client_token(upstream):
    from dataclasses import replace

    from app import create_app
    from app.access.settings import AccessSettings
    from tests.support import proxy_config

    config = replace(
        proxy_config(upstream, upstream_api_key="provider-key"), access=AccessSettings(bearer_tokens=(TOKEN,))
    )
    c = create_app(config).test_client()
    assert c.post("/v1/chat/completions", json=CHAT, headers=auth(TOKEN)).status_code == 200
    assert upstream.last.headers["authorization"] == "Bearer provider-key"


def test_without_auth_the_client_header_passes_as_before(make_app, upstream):
    c = make_app().test_client()
    assert c.post("/v1/chat/completions", json=CHAT, headers=auth("sk-client")).status_code == 200
    assert upstream.last.headers["authorization"] == "Bearer sk-client"


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_secrets_never_logged(make_app):
    c = make_app(bearer_tokens=(TOKEN,), jwt_secret=SECRET, jwt_algorithms=("HS256",)).test_client()
    collect = _Collect()
    logger = logging.getLogger("cot_proxy")
    logger.addHandler(collect)
    level = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        bad_jwt = _log_some_failures(c)
    finally:
        logger.removeHandler(collect)
        logger.setLevel(level)
    text = "\n".join(collect.lines)
    assert "QRST" in text  # the hint is there...
    for secret in ("gw-token-not-valid-QRST", TOKEN, SECRET, "gw-token-not-valid", bad_jwt, bad_jwt[:-4]):
        assert secret not in text  # ...the secret is not


def _log_some_failures(c) -> str:
    wrong = "gw-token-not-valid-QRST"
    c.post("/v1/chat/completions", json=CHAT, headers=auth(wrong))
    c.post("/v1/chat/completions", json=CHAT, headers=auth(TOKEN))
    bad_jwt = jwt.encode({"sub": "x"}, "another-secret-0123456789-0123456789", algorithm="HS256")
    c.post("/v1/chat/completions", json=CHAT, headers=auth(bad_jwt))
    return bad_jwt


# -- JWT -------------------------------------------------------------------------


def _pem_public(private) -> str:
    return (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@pytest.fixture(scope="module")
def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key():
    return ec.generate_private_key(ec.SECP256R1())


def test_jwt_hs256(make_app, upstream):
    c = make_app(jwt_secret=SECRET, jwt_algorithms=("HS256",)).test_client()
    good = jwt.encode({"sub": "team-a", "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    assert c.post("/v1/chat/completions", json=CHAT, headers=auth(good)).status_code == 200
    assert "authorization" not in upstream.last.headers
    expired = jwt.encode({"sub": "team-a", "exp": int(time.time()) - 5}, SECRET, algorithm="HS256")
    r = c.post("/v1/chat/completions", json=CHAT, headers=auth(expired))
    assert r.status_code == 401 and "expired" in r.get_json()["error"]["message"]
    forged = jwt.encode({"sub": "team-a"}, "not-the-secret-0123456789-0123456789", algorithm="HS256")
    assert c.post("/v1/chat/completions", json=CHAT, headers=auth(forged)).status_code == 401
    no_sub = jwt.encode({"exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    assert c.post("/v1/chat/completions", json=CHAT, headers=auth(no_sub)).status_code == 401
    unsigned = jwt.encode({"sub": "team-a"}, None, algorithm="none")
    assert c.post("/v1/chat/completions", json=CHAT, headers=auth(unsigned)).status_code == 401


@pytest.mark.parametrize("kind", ["RS256", "ES256"])
def test_jwt_public_key(make_app, rsa_key, ec_key, kind):
    private = rsa_key if kind == "RS256" else ec_key
    c = make_app(jwt_public_key=_pem_public(private), jwt_algorithms=("RS256", "ES256")).test_client()
    token = jwt.encode({"sub": "svc", "exp": int(time.time()) + 60}, private, algorithm=kind)
    assert c.post("/v1/chat/completions", json=CHAT, headers=auth(token)).status_code == 200
    # the public key itself as an HMAC secret (algorithm confusion) must fail
    confused = jwt.encode({"sub": "svc"}, SECRET, algorithm="HS256")
    assert c.post("/v1/chat/completions", json=CHAT, headers=auth(confused)).status_code == 401


def test_jwt_claims_models_and_rpm(make_app):
    c = make_app(jwt_secret=SECRET, jwt_algorithms=("HS256",)).test_client()
    token = jwt.encode({"sub": "team-b", "models": ["local/*"], "rpm": 2}, SECRET, algorithm="HS256")
    denied = c.post("/v1/chat/completions", json=CHAT, headers=auth(token))
    assert denied.status_code == 403 and denied.get_json()["error"]["code"] == "model_not_allowed"
    assert denied.get_json()["error"]["param"] == "model"
    body = {**CHAT, "model": "local/qwen"}
    assert [c.post("/v1/chat/completions", json=body, headers=auth(token)).status_code for _ in range(3)] == [
        200,
        200,
        429,
    ]
    lister = jwt.encode({"sub": "team-c", "models": ["local/*"]}, SECRET, algorithm="HS256")
    listed = c.get("/v1/models", headers=auth(lister))  # only allowed models are listed
    assert listed.status_code == 200 and listed.get_json()["data"] == []


def test_sdk_maps_our_errors(make_app):
    server = LiveServer(make_app(bearer_tokens=(TOKEN,)))
    try:
        with pytest.raises(openai.AuthenticationError) as err:
            openai.OpenAI(
                base_url=server.url + "/v1", api_key="wrong-token-1234", max_retries=0
            ).chat.completions.create(**CHAT)
        assert err.value.code == "invalid_api_key"
        out = openai.OpenAI(base_url=server.url + "/v1", api_key=TOKEN, max_retries=0).chat.completions.create(**CHAT)
        assert out.choices[0].message.content == "Hello from upstream"
    finally:
        server.stop()

"""TARGET_BASE_URL, both conventions: a server root (cot_proxy's compose default
`http://your-model-server:8080/`, like BACKEND_URL) keeps the client's `/v1/...` under it; a URL
with a path is the API prefix (`https://api.openai.com/v1/`). Every place that builds or shows the
target follows: the relay, /health's probe and `target_url`, routing's single provider, the
catalog's `/models` fetch. The last test runs the compose form under real Gunicorn."""

from __future__ import annotations

import pytest

from app import create_app
from app.config import Config, api_base
from app.routing.router import Router
from tests.seeds.tools import http
from tests.support import Gunicorn

MSG = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    "given, base",
    [
        ("http://your-model-server:8080/", "http://your-model-server:8080/v1/"),  # cot_proxy's compose default
        ("http://your-model-server:8080", "http://your-model-server:8080/v1/"),
        ("http://h:8080//", "http://h:8080/v1/"),
        ("https://api.openai.com/v1/", "https://api.openai.com/v1/"),  # cot_proxy's code default
        ("https://api.openai.com/v1", "https://api.openai.com/v1/"),
        ("http://h/tenant-a/v1/", "http://h/tenant-a/v1/"),
        ("https://openrouter.ai/api/v1", "https://openrouter.ai/api/v1/"),
        ("https://api.groq.com/openai/v1/", "https://api.groq.com/openai/v1/"),
    ],
)
def test_root_or_prefix(given, base):
    assert api_base(given) == base
    assert Config.from_env({"TARGET_BASE_URL": given}).target_base_url == base


def test_root_is_like_backend_url():
    root = Config.from_env({"TARGET_BASE_URL": "http://h:8081/"})
    assert root.target_base_url == Config.from_env({"BACKEND_URL": "http://h:8081"}).target_base_url


@pytest.mark.parametrize("given", ["http://h:8080/", "http://h:8080/v1"])
def test_every_view_of_the_target(given):
    cfg = Config.from_env({"TARGET_BASE_URL": given})
    for settings in (cfg.routing_settings, cfg.routing):  # single_provider and the loaded routing
        (backend,) = settings.providers["default"].backends
        assert backend.base_url == "http://h:8080/v1/"
    router = Router(cfg)
    provider = router.providers["default"]
    assert provider.models_url(provider.backends[0]) == "http://h:8080/v1/models"
    target = router.health_target
    assert target.url("chat/completions") == "http://h:8080/v1/chat/completions"
    assert target.public_url == "http://h:8080/v1/"


def test_in_process_root_relay_health_and_models(upstream):
    app = create_app(
        Config.from_env(
            {"TARGET_BASE_URL": upstream.root + "/", "CONNECT_TIMEOUT_SECONDS": "2", "REQUEST_TIMEOUT_SECONDS": "5"}
        )
    )
    c = app.test_client()
    r = c.post("/v1/chat/completions", json={"model": "m", "messages": MSG})
    assert r.status_code == 200, r.data
    assert upstream.last.path == "/v1/chat/completions"
    r = c.get("/v1/models?limit=2")
    assert r.status_code == 200 and upstream.last.path == "/v1/models?limit=2"
    r = c.get("/health")
    assert r.status_code == 200 and r.json["target_url"] == upstream.root + "/v1/"


def test_catalog_fetches_models_under_the_root(upstream, tmp_path):
    """With a config file the catalog lists the shorthand provider's models from <root>/v1/models."""
    path = tmp_path / "config.yaml"
    path.write_text("models:\n  fast: {provider: default}\n")
    cfg = Config.from_env({"TARGET_BASE_URL": upstream.root, "COT_PROXY_CONFIG": str(path)})
    router = Router(cfg)
    ids = router.catalog.fetch(router.providers["default"])  # what the background refresh calls
    assert ids and [r.path for r in upstream.background] == ["/v1/models"]


def test_compose_form_under_gunicorn(module_upstream):
    """What a cot_proxy user's compose file sets, verbatim in form: a root with a trailing slash."""
    module_upstream.reset()
    g = Gunicorn({"TARGET_BASE_URL": module_upstream.root + "/", "REQUEST_TIMEOUT_SECONDS": "10"}, workers=1)
    try:
        r = http("POST", g.url + "/v1/chat/completions", json={"model": "m", "messages": MSG})
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == "Hello from upstream"
        assert module_upstream.last.path == "/v1/chat/completions"
        s = http("POST", g.url + "/v1/chat/completions", json={"model": "m", "messages": MSG, "stream": True})
        assert b"data: [DONE]" in s.content
        assert module_upstream.last.path == "/v1/chat/completions"
        health = http("GET", g.url + "/health")
        assert health.status_code == 200
        assert health.json() == {"status": "healthy", "target_url": module_upstream.root + "/v1/"}
    finally:
        g.stop()

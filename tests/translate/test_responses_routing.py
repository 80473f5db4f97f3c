"""The `responses:` switch per provider (config.yaml) and RESPONSES_API; routing, aliases and fallbacks
apply to translated requests as to chat."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from app import create_app
from app.config import Config
from app.envparse import ConfigError
from tests.fakes.chat_only_upstream import ChatAnswer, ChatOnlyUpstream


@pytest.fixture
def second() -> Iterator[ChatOnlyUpstream]:
    server = ChatOnlyUpstream().start()
    yield server
    server.stop()


def app_with(tmp_path, yaml: str, **env: str):
    path = tmp_path / "config.yaml"
    path.write_text(yaml)
    return create_app(Config.from_env({"COT_PROXY_CONFIG": str(path), "REQUEST_TIMEOUT_SECONDS": "10", **env}))


def test_bad_switch_names_the_key(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("providers:\n  a:\n    base_url: http://127.0.0.1:9/v1\n    responses: sometimes\n")
    with pytest.raises(ConfigError, match=r"providers\.a\.responses: must be one of passthrough, translate, auto"):
        Config.from_env({"COT_PROXY_CONFIG": str(path)})
    with pytest.raises(ConfigError, match="RESPONSES_API"):
        Config.from_env({"TARGET_BASE_URL": "http://127.0.0.1:9/v1", "RESPONSES_API": "always"})


def test_switch_per_provider(tmp_path, chat_only, second):
    app = app_with(
        tmp_path,
        f"""
providers:
  local:
    base_url: {chat_only.base_url}
    responses: translate
  native:
    base_url: {second.base_url}
    responses: passthrough
""",
    )
    client = app.test_client()
    r = client.post("/v1/responses", json={"model": "local/llama", "input": "hi"})
    assert r.status_code == 200 and r.get_json()["model"] == "local/llama"
    assert [x.path for x in chat_only.requests] == ["/v1/chat/completions"]
    assert chat_only.chat_bodies()[0]["model"] == "llama"  # the provider's own name for it
    r = client.post("/v1/responses", json={"model": "native/gpt", "input": "hi"})
    assert r.status_code == 404 and [x.path for x in second.requests] == ["/v1/responses"]


def test_fallback_to_the_next_provider_translated(tmp_path, chat_only, second):
    chat_only.answer(ChatAnswer(status=503))
    second.default = ChatAnswer(text="from the fallback")
    app = app_with(
        tmp_path,
        f"""
providers:
  first:
    base_url: {chat_only.base_url}
    responses: translate
    retries: 0
  spare:
    base_url: {second.base_url}
models:
  smart:
    route: [first/big, spare/small]
""",
    )
    r = app.test_client().post("/v1/responses", json={"model": "smart", "input": "hi"})
    assert r.status_code == 200, r.get_data()
    data = r.get_json()
    assert data["model"] == "smart" and data["output"][0]["content"][0]["text"] == "from the fallback"
    assert r.headers["x-cot-proxy-provider"].startswith("spare")
    # The spare provider is `auto`: its 404 to /v1/responses, then chat completions with its model name.
    assert [x.path for x in second.requests] == ["/v1/responses", "/v1/chat/completions"]
    assert second.chat_bodies()[0]["model"] == "small"

"""Routing through several real fake upstreams: prefixes, aliases, fallbacks, balancing, health, catalog."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import requests

from app import create_app
from app.config import Config
from tests.fakes.openai_upstream import FakeUpstream, Reply, chat_chunk, json_reply, sse_reply
from tests.support import LiveServer

MSG = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def _servers() -> Iterator[list[FakeUpstream]]:
    servers = [FakeUpstream().start() for _ in range(3)]
    yield servers
    for s in servers:
        s.stop()


@pytest.fixture
def ups(_servers: list[FakeUpstream]) -> list[FakeUpstream]:
    for s in _servers:
        s.reset()
    return _servers


def dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def make(tmp_path: Path, yaml_text: str, **env: str) -> Config:
    path = tmp_path / "config.yaml"
    path.write_text(yaml_text)
    return Config.from_env(
        {"COT_PROXY_CONFIG": str(path), "CONNECT_TIMEOUT_SECONDS": "1", "REQUEST_TIMEOUT_SECONDS": "5", **env}
    )


def chat(client, model: str, **extra):
    return client.post("/v1/chat/completions", json={"model": model, "messages": MSG, **extra})


def two_providers(ups: list[FakeUpstream], extra: str = "") -> str:
    return f"""
providers:
  a: {{type: openai, base_url: {ups[0].base_url}, retries: 0}}
  b: {{type: openai, base_url: {ups[1].base_url}, retries: 0, api_key: sk-b}}
default_provider: a
{extra}
"""


def test_prefix_routing_and_provider_header(tmp_path, ups):
    c = create_app(make(tmp_path, two_providers(ups))).test_client()
    resp = chat(c, "b/foo", temperature=0.1)
    assert resp.status_code == 200
    assert ups[1].last.json()["model"] == "foo" and ups[1].last.json()["temperature"] == 0.1
    assert ups[1].last.headers["authorization"] == "Bearer sk-b"
    assert resp.headers["X-Cot-Proxy-Provider"] == "b/foo"
    chat(c, "a/org/model-7b")
    assert ups[0].last.json()["model"] == "org/model-7b"
    chat(c, "plain")
    assert ups[0].last.json()["model"] == "plain", "a bare name goes to the default provider"
    assert ups[2].requests == []


def test_unknown_provider_is_404_and_sends_nothing(tmp_path, ups):
    c = create_app(make(tmp_path, two_providers(ups))).test_client()
    resp = chat(c, "evil.example.com/gpt")
    assert resp.status_code == 404
    err = resp.get_json()["error"]
    assert err["code"] == "model_not_found" and "evil.example.com/gpt" in err["message"]
    assert all(not s.requests for s in ups)


def test_alias_with_upstream_model_and_params(tmp_path, ups):
    cfg = make(
        tmp_path,
        two_providers(
            ups,
            """
models:
  qwen3: {provider: b, upstream_model: Qwen3-32B, params: {temperature: 0.6}}
""",
        ),
    )
    live = LiveServer(create_app(cfg))
    try:
        out = live.sdk().chat.completions.create(model="qwen3", messages=MSG, temperature=1.0)
        assert out.choices[0].message.content == "Hello from upstream"
        assert out.model == "qwen3", "the client sees its own model name"
        sent = ups[1].last.json()
        assert sent["model"] == "Qwen3-32B" and sent["temperature"] == 0.6
        chunks = list(live.sdk().chat.completions.create(model="qwen3", messages=MSG, stream=True))
        assert chunks and all(c.model == "qwen3" for c in chunks)
        assert ups[1].last.json()["model"] == "Qwen3-32B"
    finally:
        live.stop()


FALLBACK = """
models:
  fast: {{route: [{first}/x, b/y]}}
"""


@pytest.mark.parametrize("fault", ["500", "429", "refused", "timeout"])
def test_fallback_before_first_byte(tmp_path, ups, fault):
    first = "a"
    yaml_text = two_providers(ups, FALLBACK.format(first=first))
    if fault == "refused":
        yaml_text = yaml_text.replace(ups[0].base_url, dead_url())
    elif fault == "timeout":
        yaml_text = yaml_text.replace("retries: 0}", "retries: 0, timeout_seconds: 0.3}", 1)
        ups[0].enqueue(Reply(before_first=1.0, parts=[b"{}"]))
    else:
        ups[0].enqueue(json_reply({"error": {"message": "busy"}}, status=int(fault)))
    c = create_app(make(tmp_path, yaml_text)).test_client()
    resp = chat(c, "fast")
    assert resp.status_code == 200, resp.data
    assert resp.headers["X-Cot-Proxy-Provider"] == "b/y"
    assert ups[1].last.json()["model"] == "y"


def test_no_fallback_on_400(tmp_path, ups):
    ups[0].enqueue(json_reply({"error": {"message": "bad", "type": "invalid_request_error"}}, status=400))
    c = create_app(make(tmp_path, two_providers(ups, FALLBACK.format(first="a")))).test_client()
    resp = chat(c, "fast")
    assert resp.status_code == 400 and resp.get_json()["error"]["message"] == "bad"
    assert ups[1].requests == []


def test_no_fallback_after_first_streamed_byte(tmp_path, ups):
    ups[0].enqueue(sse_reply([chat_chunk("partial"), chat_chunk("lost")], drop_after=1))
    c = create_app(make(tmp_path, two_providers(ups, FALLBACK.format(first="a")))).test_client()
    body = chat(c, "fast", stream=True).get_data()
    assert b"partial" in body and b'"error"' in body
    assert ups[1].requests == []


def test_retries_within_provider_honour_retry_after(tmp_path, ups):
    yaml_text = f"""
providers:
  a: {{base_url: {ups[0].base_url}, retries: 1}}
"""
    ups[0].enqueue(json_reply({"error": {"message": "slow down"}}, status=429, headers={"Retry-After": "0"}))
    c = create_app(make(tmp_path, yaml_text)).test_client()
    assert chat(c, "m").status_code == 200
    assert len(ups[0].requests) == 2


def balanced(ups: list[FakeUpstream], balance: str, weights=(1, 1, 1), extra: str = "") -> str:
    lines = "\n".join(f"      - {{base_url: {u.base_url}, weight: {w}}}" for u, w in zip(ups, weights, strict=True))
    return f"""
providers:
  local:
    balance: {balance}
    retries: 1
{extra}
    backends:
{lines}
"""


def test_round_robin_spread_by_weight(tmp_path, ups):
    c = create_app(make(tmp_path, balanced(ups, "round_robin", (2, 1, 1)))).test_client()
    for _ in range(8):
        assert chat(c, "m").status_code == 200
    assert [len(u.requests) for u in ups] == [4, 2, 2]


def test_least_busy_avoids_the_busy_backend(tmp_path, ups):
    two = ups[:2]
    c_app = create_app(make(tmp_path, balanced(two, "least_busy", (1, 1))))
    gate = threading.Event()
    for u in two:
        u.enqueue(Reply(parts=[b'{"object": "x",', b' "ok": 1}'], gate=gate))
    results: list[int] = []
    t = threading.Thread(target=lambda: results.append(chat(c_app.test_client(), "m").status_code))
    t.start()
    try:
        deadline = time.monotonic() + 10
        while not any(u.requests for u in two) and time.monotonic() < deadline:
            time.sleep(0.01)  # waiting for the first request to arrive (bounded poll)
        busy = next(i for i, u in enumerate(two) if u.requests)
        gate.set()  # second request's reply needs no wait
        assert chat(c_app.test_client(), "m").status_code == 200
        assert len(two[1 - busy].requests) == 1, "the second request went to the idle backend"
    finally:
        gate.set()
        t.join(10)
    assert results == [200]


def conversation(system: str) -> dict:
    return {"model": "m", "messages": [{"role": "system", "content": system}, {"role": "user", "content": "q"}]}


def test_prefix_affinity_sticks_and_fails_over(tmp_path, ups):
    cfg = make(tmp_path, balanced(ups, "prefix_affinity", extra="    failure_threshold: 1"))
    c = create_app(cfg).test_client()
    for _ in range(5):
        c.post("/v1/chat/completions", json=conversation("You are a pirate."))
    counts = [len(u.requests) for u in ups]
    assert sorted(counts) == [0, 0, 5], "one conversation, one backend"
    home = counts.index(5)
    for i in range(30):
        c.post("/v1/chat/completions", json=conversation(f"persona {i}"))
    assert sum(1 for u in ups if u.requests) >= 2, "different prefixes spread"
    for u in ups:
        u.reset()
    ups[home].enqueue(json_reply({"error": {"message": "down"}}, status=503))
    assert c.post("/v1/chat/completions", json=conversation("You are a pirate.")).status_code == 200
    assert len(ups[home].requests) == 1
    second = next(i for i, u in enumerate(ups) if i != home and u.requests)
    # The home backend is now ejected: the conversation sticks to its second choice.
    for _ in range(3):
        c.post("/v1/chat/completions", json=conversation("You are a pirate."))
    assert len(ups[home].requests) == 1 and len(ups[second].requests) == 4


def test_ejection_and_recovery(tmp_path, ups):
    two = ups[:2]
    extra = "    failure_threshold: 2\n    cooldown_seconds: 0.5"
    app = create_app(make(tmp_path, balanced(two, "round_robin", (1, 1), extra=extra)))
    c = app.test_client()
    two[0].responder = lambda rec: json_reply({"error": {"message": "broken"}}, status=500)
    for _ in range(6):
        assert chat(c, "m").status_code == 200  # each failure on the broken one is retried on the other
    assert len(two[0].requests) == 2, "taken out after two failures in a row"
    ready = c.get("/readyz").get_json()
    states = {b["url"]: b["up"] for b in ready["providers"]["local"]}
    assert list(states.values()) == [False, True]
    two[0].responder = None
    deadline = time.monotonic() + 5
    while len(two[0].requests) < 3 and time.monotonic() < deadline:
        chat(c, "m")
        time.sleep(0.05)  # the cool-down is time itself: poll, bounded
    assert len(two[0].requests) >= 3, "tried again after the cool-down"


def test_readyz_503_when_default_provider_down(tmp_path, ups):
    yaml_text = f"providers:\n  a: {{base_url: {dead_url()}, retries: 0, failure_threshold: 1}}\n"
    c = create_app(make(tmp_path, yaml_text)).test_client()
    assert c.get("/readyz").status_code == 200
    chat(c, "m")
    resp = c.get("/readyz")
    assert resp.status_code == 503 and resp.get_json()["providers"]["a"][0]["up"] is False


def test_models_union_with_dead_and_slow_provider(tmp_path, ups):
    ups[1].responder = lambda rec: Reply(hang=True)  # slow: never answers its model list
    yaml_text = f"""
providers:
  a: {{base_url: {ups[0].base_url}}}
  slow: {{base_url: {ups[1].base_url}}}
  dead: {{base_url: {dead_url()}, models: [static-model]}}
models:
  fast: {{route: [a/fake-model]}}
"""
    live = LiveServer(create_app(make(tmp_path, yaml_text)))
    try:
        sdk = live.sdk()
        deadline = time.monotonic() + 10
        ids: list[str] = []
        while "a/fake-model" not in ids and time.monotonic() < deadline:
            started = time.monotonic()
            ids = [m.id for m in sdk.models.list()]
            assert time.monotonic() - started < 1.0, "served from memory, never waits on a provider"
            time.sleep(0.05)  # background fetch: poll, bounded
        assert {"a/fake-model", "dead/static-model", "fast"} <= set(ids)
        assert sdk.models.retrieve("a/fake-model").id == "a/fake-model"
        with pytest.raises(openai.NotFoundError):
            sdk.models.retrieve("a/nope")
        out = sdk.chat.completions.create(model="a/fake-model", messages=MSG)
        assert out.choices[0].message.content == "Hello from upstream"
        assert ups[0].last.json()["model"] == "fake-model"
    finally:
        live.stop()
        ups[1].responder = None


def test_whole_id_listed_by_provider_is_not_split(tmp_path, ups):
    ups[0].responder = lambda rec: (
        json_reply({"object": "list", "data": [{"id": "b/weird-id", "object": "model"}]})
        if rec.path.endswith("/models")
        else None
    )
    cfg = make(tmp_path, two_providers(ups))
    app = create_app(cfg)
    router = app.extensions["cot_proxy.router"]
    router.catalog.models["a"] = ["b/weird-id"]  # as fetched
    ups[0].responder = None
    chat(app.test_client(), "b/weird-id")
    assert ups[0].last.json()["model"] == "b/weird-id" and ups[1].requests == []


def test_metadata_open_and_descriptive(tmp_path, ups):
    c = create_app(make(tmp_path, two_providers(ups))).test_client()
    meta = c.get("/v1/metadata").get_json()
    assert meta["schema_version"] == "v1" and meta["capabilities"]["streaming"] is True
    assert {p["name"] for p in meta["providers"]} == {"a", "b"}


def test_env_shorthands_become_providers(ups):
    cfg = Config.from_env({"TARGET_BASE_URL": ups[0].base_url, "OLLAMA_BASE_URL": ups[1].root})
    c = create_app(cfg).test_client()
    chat(c, "ollama/llama3.1:8b")
    assert ups[1].last.path == "/v1/chat/completions" and ups[1].last.json()["model"] == "llama3.1:8b"
    chat(c, "gpt-4o")
    assert ups[0].last.json()["model"] == "gpt-4o"


def test_requests_session_is_real(ups):
    assert requests.get(ups[0].base_url + "models", timeout=5).status_code == 200


def test_ejection_shared_through_redis(tmp_path, ups):
    """Two proxies (as two workers or replicas) sharing REDIS_URL: one ejects, the other follows."""
    import redis

    url = "redis://127.0.0.1:6379/14"
    client = redis.Redis.from_url(url)
    client.flushdb()
    two = ups[:2]
    yaml_text = f"""
providers:
  local:
    retries: 0
    failure_threshold: 1
    cooldown_seconds: 30
    backends: [{{base_url: {two[0].base_url}}}, {{base_url: {two[1].base_url}}}]
"""
    first = create_app(make(tmp_path, yaml_text, REDIS_URL=url))
    second = create_app(make(tmp_path, yaml_text, REDIS_URL=url))
    two[0].responder = lambda rec: json_reply({"error": {"message": "broken"}}, status=500)
    c1 = first.test_client()
    for _ in range(2):
        chat(c1, "m")
    assert len(two[0].requests) == 1, "ejected by the first proxy"
    key = "cot-proxy:ejected:" + two[0].base_url
    assert client.pttl(key) > 0
    router = second.extensions["cot_proxy.router"]
    router.catalog.shared.sync(b for p in router.providers.values() for b in p.backends)
    c2 = second.test_client()
    for _ in range(4):
        assert chat(c2, "m").status_code == 200
    assert len(two[0].requests) == 1, "the second proxy never sent to the ejected backend"
    two[0].responder = None
    client.flushdb()


def test_failed_attempts_are_counted_for_the_provider_that_failed(tmp_path, ups):
    from app.observability import metrics

    def errors(provider: str, kind: str) -> float:
        labels = {"provider": provider, "kind": kind}
        return metrics.REGISTRY.get_sample_value("cot_proxy_upstream_errors_total", labels) or 0

    yaml_text = two_providers(ups, FALLBACK.format(first="a"))
    before = errors("a", "5xx")
    ups[0].enqueue(json_reply({"error": {"message": "busy"}}, status=503))
    resp = chat(create_app(make(tmp_path, yaml_text)).test_client(), "fast")
    assert resp.status_code == 200 and resp.headers["X-Cot-Proxy-Provider"] == "b/y"
    resp.close()  # the done hooks run when the server closes the response
    assert errors("a", "5xx") == before + 1

"""Real Gunicorn (gevent workers) sharing a real Redis and one key store: limits exact across 4 workers and
across two proxy processes; a key made by the CLI, used by the openai SDK, then revoked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import requests

from app.access.store import KeyStore
from tests.support import ROOT, TEST_REDIS_URL, Gunicorn

MSG = [{"role": "user", "content": "hi"}]
CHAT = {"model": "m", "messages": MSG}


@pytest.fixture(scope="module")
def env(tmp_path_factory, _redis_client) -> Iterator[dict[str, str]]:
    prefix = f"cot-proxy-test:{uuid.uuid4().hex[:12]}:"
    db = tmp_path_factory.mktemp("keys") / "keys.db"
    yield {
        "VIRTUAL_KEYS": "true",
        "DATABASE_URL": f"sqlite:///{db}",
        "REDIS_URL": TEST_REDIS_URL,
        "REDIS_PREFIX": prefix,
        "USAGE_FLUSH_SECONDS": "0.2",
        "REQUEST_TIMEOUT_SECONDS": "20",
    }
    keys = list(_redis_client.scan_iter(match=prefix + "*", count=1000))
    if keys:
        _redis_client.delete(*keys)


@pytest.fixture(scope="module")
def proxies(env, module_upstream) -> Iterator[tuple[Gunicorn, Gunicorn]]:
    common = {**env, "TARGET_BASE_URL": module_upstream.base_url}
    a = Gunicorn(common, workers=4)
    try:
        b = Gunicorn(common, workers=2)
    except BaseException:
        a.stop()
        raise
    yield a, b
    for g in (a, b):  # stop both at once; each waits for its workers
        g.proc.terminate()
    for g in (a, b):
        log = g.stop()
        assert "Traceback" not in log, log


@pytest.fixture
def store(env) -> Iterator[KeyStore]:
    s = KeyStore(env["DATABASE_URL"])
    yield s
    s.close()


def flask_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in ("TARGET_BASE_URL", "BACKEND_URL")}
    full.update(env)
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "cot_proxy", "keys", *args],
        cwd=ROOT,
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
    )


def post(url: str, key: str) -> requests.Response:
    # a fresh connection each time, so the requests spread over the workers
    return requests.post(
        url + "/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {key}"}, timeout=15
    )


def test_limit_exact_across_four_workers(proxies, store):
    a, _ = proxies
    secret, _ = store.create("burst", rpm=10)
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=15) as pool:
        statuses = sorted(r.status_code for r in pool.map(lambda _: post(a.url, secret), range(15)))
    assert statuses == [200] * 10 + [429] * 5
    refused = post(a.url, secret)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert 60 - (time.monotonic() - started) - 1 <= int(refused.headers["Retry-After"]) <= 60


def test_limit_shared_by_two_proxy_processes(proxies, store):
    a, b = proxies
    secret, _ = store.create("replicas", rpm=6)
    started = time.monotonic()
    assert [post((a, b)[i % 2].url, secret).status_code for i in range(6)] == [200] * 6
    for g in (a, b):
        r = post(g.url, secret)
        assert r.status_code == 429
        assert 60 - (time.monotonic() - started) - 1 <= int(r.headers["Retry-After"]) <= 60
        assert r.headers["x-ratelimit-remaining-requests"] == "0"


def test_cli_key_with_openai_sdk_then_revoked(proxies, env):
    a, b = proxies
    created = flask_cli(env, "create", "--name", "sdk-team", "--rpm", "100", "--models", "m,local/*")
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    assert secret.startswith("sk-cp-") and secret not in created.stderr
    sdk = openai.OpenAI(base_url=a.url + "/v1", api_key=secret, max_retries=0, timeout=15)
    out = sdk.chat.completions.create(model="m", messages=MSG)
    assert out.choices[0].message.content == "Hello from upstream"
    raw = sdk.chat.completions.with_raw_response.create(model="m", messages=MSG)
    assert raw.headers["x-ratelimit-limit-requests"] == "100"
    chunks = list(sdk.chat.completions.create(model="m", messages=MSG, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from upstream"
    with pytest.raises(openai.PermissionDeniedError):
        sdk.chat.completions.create(model="gpt-4o", messages=MSG)

    revoked = flask_cli(env, "revoke", "sdk-team")
    assert revoked.returncode == 0, revoked.stderr
    revoked_at = time.monotonic()
    sdk_b = openai.OpenAI(base_url=b.url + "/v1", api_key=secret, max_retries=0, timeout=15)
    late = 0  # answered inside the key cache's window after the revoke: recorded like any other
    for client in (sdk, sdk_b):  # every worker of both processes refuses within a second
        with pytest.raises(openai.AuthenticationError):
            while time.monotonic() - revoked_at < 3:  # bounded
                client.chat.completions.create(model="m", messages=MSG)
                late += 1
    assert time.monotonic() - revoked_at < 1.5  # 1 s for the cache + slack for the calls themselves
    for _ in range(8):  # spread over workers: none still has it
        with pytest.raises(openai.AuthenticationError):
            sdk.chat.completions.create(model="m", messages=MSG)
    sdk.close()  # idle keep-alive connections would hold up Gunicorn's graceful stop
    sdk_b.close()

    store = KeyStore(env["DATABASE_URL"])
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the workers flush every 0.2 s
            rows = store.usage(key="sdk-team")
            if rows and rows[0]["requests"] >= 3 + late:
                break
            time.sleep(0.05)  # waiting for another process's timer: nothing to wait on but the store
    finally:
        store.close()
    usage = flask_cli(env, "usage", "--json", "--key", "sdk-team")
    by_model = {r["model"]: r for r in json.loads(usage.stdout)}
    assert by_model["m"]["requests"] == 3 + late and by_model["m"]["total_tokens"] == 7 + 7 + 6 + 7 * late
    assert by_model["m"]["estimated_requests"] == 0

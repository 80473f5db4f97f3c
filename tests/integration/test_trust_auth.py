"""Authentication on every route and method, through real Gunicorn, against a recording upstream.

With GATEWAY_BEARER_TOKEN set, the open set is exactly GET and HEAD of the probes, /v1/metadata,
/openapi.json and /metrics. Everything else (every other route, method and spelling) without
credentials or with a wrong token is 401 (400 `invalid_path` for the hostile spellings, 404/405 for
routes that do not exist outside /v1/) and the upstream receives nothing. With the right token the
request is relayed and the upstream never sees the client's token. One table, one test, one Gunicorn.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.support import Gunicorn, raw_request

TOKEN = "tok-right-0123456789"
WRONG = "tok-wrong-9876543210"
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
CREDENTIALS = {"none": None, "wrong": WRONG, "right": TOKEN}
# One body every JSON family accepts (unknown fields pass through).
BODY = json.dumps(
    {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "input": "hi",
        "prompt": "hi",
        "query": "q",
        "documents": ["a", "b"],
        "voice": "alloy",
    }
).encode()

OPEN = ("/healthz", "/livez", "/health", "/readyz", "/v1/metadata", "/openapi.json", "/metrics")
PROBING = ("/health", "/readyz")
"""Open paths that may touch the upstream themselves (readiness)."""
ROUTES = (
    "/v1/models",
    "/v1/models/fake-model",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/files",
    "/v1/files/file-1",
    "/v1/responses",
    "/v1/responses/resp_1",
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/v1/moderations",
    "/v1/images/generations",
    "/v1/audio/transcriptions",
    "/v1/audio/speech",
    "/v1/rerank",
    "/v1/video/generations",
    "/v1/usage",
    "/v1/batches/b-1/cancel",
    "/v1/",
)
RELAYED_ON_POST = frozenset(
    {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/files",
        "/v1/responses",
        "/v1/moderations",
        "/v1/images/generations",
        "/v1/audio/transcriptions",
        "/v1/audio/speech",
        "/v1/rerank",
        "/v1/video/generations",
        "/v1/batches/b-1/cancel",
    }
)
"""Routes a POST with the right token must reach the upstream on (exactly once)."""
NOT_OPEN = (
    # other spellings of open paths: none of them is open
    "/v1/metadata/",
    "/V1/metadata",
    "/v1/METADATA",
    "/healthz/",
    "/HEALTHZ",
    "/metrics/",
    "/v1/metadata;x",
)
SAME_AS_OPEN = (
    # percent-encodings that decode to an open path are that path: open for GET/HEAD, authenticated otherwise
    "/v1/%6detadata",
    "/v1%2fmetadata",
)
LOCAL_404 = frozenset({"/v1/", "/v1/usage"})
"""Not relayed routes: `/v1/` names nothing, `/v1/usage` is off without ADMIN_TOKEN (404, no upstream contact)."""
HOSTILE = (
    # hostile spellings (see test_trust_paths.py): 400 invalid_path, or 401 first
    "/v1/metadata%00",
    "//v1/metadata",
    "/v1//metadata",
    "/v1/./metadata",
    "/v1/x/../metadata",
    "/v1/%2e/metadata",
    "//healthz",
    "/./healthz",
)
SPELLINGS = NOT_OPEN + SAME_AS_OPEN + HOSTILE
PATHS = OPEN + ROUTES + SPELLINGS


@pytest.fixture(scope="module")
def proxy(upstream) -> Iterator[Gunicorn]:
    # No UPSTREAM_API_KEY: the client's Authorization must be dropped by the proxy itself.
    g = Gunicorn(
        {
            "TARGET_BASE_URL": upstream.url("/tenant-a/v1/"),
            "GATEWAY_BEARER_TOKEN": TOKEN,
            "REQUEST_TIMEOUT_SECONDS": "10",
        },
        workers=1,
    )
    yield g
    g.stop()


def _is_open(method: str, path: str) -> bool:
    return method in ("GET", "HEAD") and (path in OPEN or path in SAME_AS_OPEN)


def test_table_is_consistent():
    assert len(set(PATHS)) == len(PATHS)
    assert RELAYED_ON_POST <= set(ROUTES)
    assert not set(SPELLINGS) & set(OPEN)


@pytest.mark.parametrize("credential", list(CREDENTIALS))
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("path", PATHS)
def test_auth_table(proxy, up, path, method, credential):
    headers = {}
    if CREDENTIALS[credential] is not None:
        headers["Authorization"] = f"Bearer {CREDENTIALS[credential]}"
    body = None
    if method in ("POST", "PUT", "PATCH"):
        headers["Content-Type"] = "application/json"
        body = BODY
    r = raw_request(proxy.port, method, path, headers, body)
    where = f"{method} {path} ({credential} credentials) -> {r.status} {r.body[:200]!r}"
    for secret in (TOKEN, WRONG):
        assert secret.encode() not in r.body, f"{where}: the answer echoes a token"
        for rec in up.requests + up.background:
            assert secret.encode() not in rec.raw, f"{where}: the upstream saw the client's token: {rec.line!r}"

    if path in HOSTILE:
        allowed = {400} if credential == "right" else {400, 401}
        assert r.status in allowed, where
        if r.status == 400 and method != "HEAD":
            assert r.error()["code"] == "invalid_path", where
        assert not up.seen, f"{where}: the upstream received {up.seen}"
        return

    if credential == "right" or _is_open(method, path):
        assert r.status not in (401, 403), where
        assert r.status < 500, where
        if _is_open(method, path):
            assert r.status == 200, where
        if path not in PROBING:
            assert len(up.requests) <= 1, f"{where}: {[x.line for x in up.requests]}"
        if credential == "right" and method == "POST" and path in RELAYED_ON_POST:
            assert [x.line for x in up.requests] == [f"POST /tenant-a{path} HTTP/1.1".encode()], where
        if _is_open(method, path) and path not in PROBING:
            assert not up.requests, f"{where}: an open path reached the upstream"
        return

    # No or a wrong credential on anything not open.
    if path in LOCAL_404:
        assert r.status in (401, 404), where
    elif path.startswith("/v1/") or path in SAME_AS_OPEN:
        assert r.status == 401, where
    else:
        assert r.status in (401, 404, 405), where
    if r.status == 401 and method != "HEAD":
        if path.startswith("/v1/messages") and method == "POST":  # Anthropic's routes, Anthropic's shape
            assert r.json() == {
                "type": "error",
                "error": {"type": "authentication_error", "message": r.json()["error"]["message"]},
            }, where
        else:
            assert r.error()["code"] == "invalid_api_key", where
    assert not up.seen, f"{where}: the upstream received {up.seen}"

"""A virtual key's model allow-list holds on every route that names a model, through real Gunicorn.

The key may use `allowed-*` only. A disallowed model, in a JSON body or in a multipart `model`
field, gets 403 `model_not_allowed` and the upstream receives nothing; an allowed one is relayed
unchanged (multipart bytes included) and the upstream never sees the client's key.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator

import pytest

from app.access.store import KeyStore
from tests.support import Gunicorn, raw_request

ALLOWED = "allowed-model"
Builder = Callable[[str], tuple[str, bytes]]
"""model -> (Content-Type, body)"""
DENIED = "gpt-4o"


def _json_body(extra: dict) -> Builder:
    def build(model: str) -> tuple[str, bytes]:
        return "application/json", json.dumps({"model": model, **extra}).encode()

    return build


def _mislabelled(extra: dict) -> Builder:
    """JSON labelled text/plain: some servers parse it anyway, so the allow-list must too."""

    def build(model: str) -> tuple[str, bytes]:
        return "text/plain", json.dumps({"model": model, **extra}).encode()

    return build


def _multipart(model_first: bool = True, content_type: str = "audio/wav") -> Builder:
    def build(model: str) -> tuple[str, bytes]:
        boundary = "----trust" + uuid.uuid4().hex
        model_part = (f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\n{model}\r\n').encode()
        file_part = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.bin"\r\n'
                f"Content-Type: {content_type}\r\n\r\n"
            ).encode()
            + bytes(range(256)) * 4
            + b"\r\n"
        )
        parts = [model_part, file_part] if model_first else [file_part, model_part]
        return f"multipart/form-data; boundary={boundary}", b"".join(parts) + f"--{boundary}--\r\n".encode()

    return build


ROUTES = {
    # named by the contract
    "/v1/responses": _json_body({"input": "hi"}),
    "/v1/images/generations": _json_body({"prompt": "a cat"}),
    "/v1/moderations": _json_body({"input": "hi"}),
    "/v1/responses#text-plain": _mislabelled({"input": "hi"}),
    "/v1/audio/speech": _json_body({"input": "hi", "voice": "alloy"}),
    "/v1/audio/transcriptions": _multipart(),
    "/v1/audio/transcriptions#model-last": _multipart(model_first=False),
    # other multipart routes that name a model
    "/v1/audio/translations": _multipart(),
    "/v1/images/edits": _multipart(content_type="image/png"),
    # routes the guard already knew
    "/v1/chat/completions": _json_body({"messages": [{"role": "user", "content": "hi"}]}),
    "/v1/completions": _json_body({"prompt": "hi"}),
    "/v1/embeddings": _json_body({"input": "hi"}),
    "/v1/rerank": _json_body({"query": "q", "documents": ["a", "b"]}),
    "/v1/video/generations": _json_body({"prompt": "a cat"}),
}


@pytest.fixture(scope="module")
def setup(upstream, tmp_path_factory) -> Iterator[tuple[Gunicorn, str]]:
    db = tmp_path_factory.mktemp("allowlist") / "keys.db"
    store = KeyStore(f"sqlite:///{db}")
    try:
        secret, _ = store.create("allow-list", models=["allowed-*"])
    finally:
        store.close()
    g = Gunicorn(
        {
            "TARGET_BASE_URL": upstream.url("/tenant-a/v1/"),
            "VIRTUAL_KEYS": "true",
            "DATABASE_URL": f"sqlite:///{db}",
            "USAGE_FLUSH_SECONDS": "0.2",
            "REQUEST_TIMEOUT_SECONDS": "10",
        },
        workers=1,
    )
    yield g, secret
    g.stop()


def _post(g: Gunicorn, secret: str, route: str, model: str):
    content_type, body = ROUTES[route](model)
    path = route.split("#")[0]
    r = raw_request(g.port, "POST", path, {"Authorization": f"Bearer {secret}", "Content-Type": content_type}, body)
    return path, body, r


@pytest.mark.parametrize("route", list(ROUTES))
def test_disallowed_model_is_403_and_never_sent(setup, up, route):
    g, secret = setup
    path, _, r = _post(g, secret, route, DENIED)
    assert r.status == 403, f"POST {path} with model {DENIED!r}: {r}"
    err = r.error()
    assert err["code"] == "model_not_allowed" and err["param"] == "model", err
    assert not up.seen, f"the upstream received {up.seen}"


@pytest.mark.parametrize("route", list(ROUTES))
def test_allowed_model_is_relayed_unchanged(setup, up, route):
    g, secret = setup
    path, body, r = _post(g, secret, route, ALLOWED)
    assert r.status == 200, f"POST {path} with model {ALLOWED!r}: {r}"
    assert [x.line for x in up.requests] == [f"POST /tenant-a{path} HTTP/1.1".encode()]
    rec = up.requests[0]
    assert secret.encode() not in rec.raw
    if (rec.header("content-type") or "").startswith("multipart/"):
        assert rec.body == body  # uploads go upstream byte for byte
    else:
        assert json.loads(rec.body)["model"] == ALLOWED

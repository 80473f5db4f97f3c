"""GET /openapi.json: a valid OpenAPI 3.0 document, served open, parsed lazily, true to the routes."""

from __future__ import annotations

import re

import orjson
import pytest
from flask import Flask

from app import create_app, discovery, openapi
from tests.fuzz import support
from tests.fuzz.support import Target

METHODS = ("get", "put", "post", "delete", "options", "head", "patch")


def test_document_is_valid_openapi_30() -> None:
    from schemathesis.specs.openapi.definitions import OPENAPI_30_VALIDATOR

    spec = openapi.spec()
    errors = [
        f"{'/'.join(map(str, e.instance_path))}: {e.message[:200]}" for e in OPENAPI_30_VALIDATOR.iter_errors(spec)
    ]
    assert not errors, errors
    assert spec["openapi"].startswith("3.0")
    assert spec["info"]["version"] == discovery.VERSION


@pytest.mark.parametrize("target", ["echo", "auth"])
def test_served_open_as_json(targets: dict[str, Target], target: str) -> None:
    client = targets[target].client
    r = client.get("/openapi.json")  # no credentials, also with authentication on
    assert r.status_code == 200 and r.mimetype == "application/json"
    assert orjson.loads(r.get_data()) == openapi.spec()
    head = client.head("/openapi.json")
    assert head.status_code == 200 and head.get_data() == b""


def test_parsed_on_first_request_only(monkeypatch: pytest.MonkeyPatch) -> None:
    openapi._load.cache_clear()
    app = create_app(support.echo_config())
    assert openapi._load.cache_info().currsize == 0, "create_app must not read the document"
    assert app.test_client().get("/openapi.json").status_code == 200
    assert openapi._load.cache_info().currsize == 1


def _served_by(app: Flask, method: str, path: str) -> str:
    adapter = app.url_map.bind("proxy")
    endpoint, _ = adapter.match(path.replace("{model}", "some-model"), method=method.upper())
    return endpoint


def test_every_documented_operation_has_its_own_route(targets: dict[str, Target]) -> None:
    """No documented path falls through to the /v1/ catch-all by accident (a renamed route would)."""
    app = targets["echo"].app
    for path, item in openapi.spec()["paths"].items():
        for method in (m for m in item if m in METHODS):
            assert _served_by(app, method, path) != "passthrough.passthrough", f"{method.upper()} {path}"


def test_every_route_of_the_proxy_is_documented(targets: dict[str, Target]) -> None:
    """Each of the app's own routes (the /v1/ catch-all and the static files aside) has a path here."""
    app = targets["echo"].app
    documented = openapi.spec()["paths"]
    for rule in app.url_map.iter_rules():
        if rule.endpoint in ("static", "passthrough.passthrough"):
            continue
        path = re.sub(r"<(?!path:rest>)(?:\w+:)?(\w+)>", r"{\1}", str(rule))  # <path:model> -> {model}
        if "<path:rest>" in path:  # the media and video families: their documented operations
            prefix = path.split("<path:rest>")[0]
            assert any(p.startswith(prefix) for p in documented), str(rule)
            continue
        assert path in documented, f"{rule} ({rule.endpoint}) is not in app/openapi.yaml"


def test_discovery_endpoints_are_documented() -> None:
    documented = openapi.spec()["paths"]
    for path, method, _ in discovery.ENDPOINTS:
        path = path.replace("{id}", "{model}")
        assert method.lower() in documented.get(path, {}), f"{method} {path} is in /v1/metadata but not documented"

"""GET /openapi.json: the proxy's own OpenAPI 3.0 description, open without credentials.

The document is `app/openapi.yaml`, read and converted once, on the first
request (a worker that is never asked for it never parses it). It describes the
probes, discovery, the model list, `/v1/usage`, and the request bodies of the
relayed families as far as the proxy itself checks them (app/validation.py);
tests/fuzz/ fuzzes the app against it.
"""

from __future__ import annotations

import functools
import threading
from pathlib import Path
from typing import Any

import orjson
from flask import Blueprint, Flask, Response

from .discovery import VERSION

bp = Blueprint("openapi", __name__)
SPEC_PATH = Path(__file__).with_name("openapi.yaml")
_lock = threading.Lock()


@functools.cache
def _load() -> tuple[dict[str, Any], bytes]:
    import yaml  # only when the document is first asked for

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with SPEC_PATH.open(encoding="utf-8") as f:
        spec = yaml.load(f, Loader=loader)  # noqa: S506 - a safe loader
    spec["info"]["version"] = VERSION
    return spec, orjson.dumps(spec)


def spec() -> dict[str, Any]:
    """The document as a dict (shared: do not modify)."""
    with _lock:
        return _load()[0]


@bp.get("/openapi.json")
def openapi_json() -> Response:
    with _lock:
        raw = _load()[1]
    return Response(raw, mimetype="application/json", headers={"Cache-Control": "no-cache"})


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)

"""GET /v1/metadata: service discovery (the Nexus gateway's schema v1).

What this proxy serves, its providers with type and health, and capabilities;
`reasoning.think_prefill`: what `think_prefilled=auto` learned about each model's
chat template (app/transforms/prefill.py). Open without a key, like the probes.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, jsonify

from .routing.router import Router

bp = Blueprint("discovery", __name__)
VERSION = "0.1.0"

ENDPOINTS = [
    ("/v1/chat/completions", "POST", "chat.completions.create"),
    ("/v1/completions", "POST", "completions.create"),
    ("/v1/embeddings", "POST", "embeddings.create"),
    ("/v1/models", "GET", "models.list"),
    ("/v1/models/{id}", "GET", "models.retrieve"),
    ("/v1/images/generations", "POST", "images.generate"),
    ("/v1/audio/transcriptions", "POST", "audio.transcriptions.create"),
    ("/v1/audio/speech", "POST", "audio.speech.create"),
    ("/v1/rerank", "POST", "rerank.create"),
    ("/v1/video/pipeline/generations", "POST", "video.generations.create"),
    ("/v1/video/pipeline/generations/status", "POST", "video.generations.status"),
]


def metadata(router: Router, think: Any = None) -> dict[str, Any]:
    providers = [
        {
            "name": name,
            "type": p.kind,
            "healthy": any(b.healthy() for b in p.backends),
            "backends": [b.state() for b in p.backends],
        }
        for name, p in router.providers.items()
    ]
    if router.gateway is not None:
        providers.append({"name": router.gateway.name, "type": "livepeer", "healthy": None, "backends": []})
    out: dict[str, Any] = {
        "schema_version": "v1",
        "service": {
            "name": "cot-proxy",
            "version": VERSION,
            "description": "OpenAI-compatible reverse proxy with reasoning handling and routing",
        },
        "endpoints": [{"path": p, "method": m, "operation_id": o} for p, m, o in ENDPOINTS],
        "providers": providers,
        "default_provider": router.default_provider,
        "capabilities": {
            "domains": ["chat", "embedding", "image", "audio", "video"],
            "modalities": ["text", "image", "audio", "video"],
            "streaming": True,
            "embeddings": True,
            "images": True,
            "rerank": True,
            "video": True,
        },
    }
    if think is not None:
        out["reasoning"] = {"think_prefill": think.known()}
    return out


def find_think(app: Any) -> Any:
    """The pipeline's think step (None when the app has no relay or no such step)."""
    relay = app.extensions.get("cot_proxy.relay")
    for step in getattr(getattr(relay, "pipeline", None), "transforms", ()):
        if getattr(step, "name", None) == "think" and hasattr(step, "known"):
            return step
    return None


@bp.get("/v1/metadata")
def get_metadata() -> Response:
    return jsonify(metadata(current_app.extensions["cot_proxy.router"], find_think(current_app)))


def init_app(app: Any) -> None:
    app.register_blueprint(bp)

"""One blueprint per API family. Each names its family and hands over to the relay."""

from __future__ import annotations

from flask import Flask, Response, current_app

from ..relay import Family, Relay


def relay(family: Family) -> Response:
    r: Relay = current_app.extensions["cot_proxy.relay"]
    return r.handle(family)


def init_app(app: Flask) -> None:
    from . import chat, completions, embeddings, media, models, passthrough, rerank, video

    for module in (chat, completions, embeddings, models, rerank, media, video, passthrough):
        app.register_blueprint(module.bp)

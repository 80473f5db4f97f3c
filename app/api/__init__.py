"""One blueprint per API family. Each names its family and hands over to the relay."""

from __future__ import annotations

from flask import Flask, Response

from ..inbound import serve
from ..relay import Family


def relay(family: Family) -> Response:
    return serve(family)


def init_app(app: Flask) -> None:
    from . import chat, completions, embeddings, media, messages, models, passthrough, rerank, responses, video

    for module in (chat, completions, embeddings, models, rerank, media, video, messages, responses, passthrough):
        app.register_blueprint(module.bp)

"""POST /v1/chat/completions (JSON or SSE)."""

from flask import Blueprint, Response

from .. import echo, validation
from ..relay import Family
from . import relay

bp = Blueprint("chat", __name__)
CHAT = Family("chat", json_body=True, parse_response=True, validate=validation.chat, echo=echo.chat)


@bp.post("/v1/chat/completions")
def chat_completions() -> Response:
    return relay(CHAT)

"""POST /v1/messages (Anthropic Messages, JSON or SSE) and POST /v1/messages/count_tokens.

Per target, `/v1/messages` passes through to an upstream that speaks it or is translated into chat
completions (app/translate/messages_steps.py); every error is written in Anthropic's shape.
`count_tokens` is answered here, with the proxy's own estimate (no upstream speaks it reliably).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response

from .. import echo
from ..exchange import Exchange
from ..relay import Family
from ..translate import messages
from . import relay

bp = Blueprint("messages", __name__)


def validate_count(body: dict[str, Any]) -> None:
    """count_tokens takes a Messages request without `max_tokens`."""
    messages.validate({"max_tokens": 1, **body} if "max_tokens" not in body else body)


def count_tokens(ex: Exchange) -> Response:
    return echo.json_response({"input_tokens": messages.count_tokens(ex.body)})


MESSAGES = Family(
    "messages", json_body=True, parse_response=True, validate=messages.validate, errors=messages.ANTHROPIC_ERRORS
)
COUNT_TOKENS = Family(
    "count_tokens", json_body=True, validate=validate_count, local=count_tokens, errors=messages.ANTHROPIC_ERRORS
)


@bp.post("/v1/messages")
def create() -> Response:
    return relay(MESSAGES)


@bp.post("/v1/messages/count_tokens")
def count() -> Response:
    return relay(COUNT_TOKENS)

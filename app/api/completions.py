"""POST /v1/completions (legacy text completions, JSON or SSE)."""

from flask import Blueprint, Response

from .. import echo, validation
from ..relay import Family
from . import relay

bp = Blueprint("completions", __name__)
COMPLETIONS = Family(
    "completions", json_body=True, parse_response=True, validate=validation.completions, echo=echo.completions
)


@bp.post("/v1/completions")
def completions() -> Response:
    return relay(COMPLETIONS)

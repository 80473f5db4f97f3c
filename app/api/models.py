"""GET /v1/models and /v1/models/<id>."""

from flask import Blueprint, Response

from .. import echo
from ..relay import Family
from . import relay

bp = Blueprint("models", __name__)
MODELS = Family("models", parse_response=True, echo=echo.models)


@bp.get("/v1/models")
@bp.get("/v1/models/<path:model>")
def models(model: str | None = None) -> Response:
    return relay(MODELS)

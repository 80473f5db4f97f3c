"""POST /v1/embeddings."""

from flask import Blueprint, Response

from .. import echo, validation
from ..relay import Family
from . import relay

bp = Blueprint("embeddings", __name__)
EMBEDDINGS = Family(
    "embeddings", json_body=True, parse_response=True, validate=validation.embeddings, echo=echo.embeddings
)


@bp.post("/v1/embeddings")
def embeddings() -> Response:
    return relay(EMBEDDINGS)

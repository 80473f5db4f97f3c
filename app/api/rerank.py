"""POST /v1/rerank (Cohere shape: query + documents -> ranked results)."""

from flask import Blueprint, Response

from ..relay import Family
from . import relay

bp = Blueprint("rerank", __name__)
RERANK = Family("rerank", json_body=True, parse_response=True)


@bp.post("/v1/rerank")
def rerank() -> Response:
    return relay(RERANK)

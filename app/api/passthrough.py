"""Every other path under /v1/: relayed transparently, any method, query kept."""

from flask import Blueprint, Response

from ..relay import Family
from . import relay

bp = Blueprint("passthrough", __name__)
PASSTHROUGH = Family("passthrough")
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


@bp.route("/v1/<path:rest>", methods=METHODS)
def passthrough(rest: str) -> Response:
    return relay(PASSTHROUGH)

"""POST /v1/video/...: asynchronous video jobs (submit returns a job id; status polls it)."""

from flask import Blueprint, Response

from ..relay import Family
from . import relay

bp = Blueprint("video", __name__)
VIDEO = Family("video", json_body=True, parse_response=True)


@bp.post("/v1/video/<path:rest>")
def video(rest: str) -> Response:
    return relay(VIDEO)

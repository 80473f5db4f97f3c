"""Images and audio: binary-safe, so bodies stream through in chunks and never sit whole in memory.

JSON requests (image generation) are still forwarded as the client sent them;
multipart uploads (transcriptions, image edits) go upstream unchanged.
"""

from flask import Blueprint, Response

from ..relay import Family
from . import relay

bp = Blueprint("media", __name__)
MEDIA = Family("media")


@bp.route("/v1/images/<path:rest>", methods=["POST"])
@bp.route("/v1/audio/<path:rest>", methods=["POST"])
def media(rest: str) -> Response:
    return relay(MEDIA)

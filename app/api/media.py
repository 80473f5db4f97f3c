"""Images and audio: binary-safe request bodies (multipart uploads go upstream unchanged, streamed).

Images answers are JSON (`data: [{url | b64_json}]`), so they are read and checked
like any JSON family, within MAX_RESPONSE_BYTES. Audio answers may be binary
(speech) or text (transcription formats): they stream through untouched.
"""

from flask import Blueprint, Response

from ..relay import Family
from . import relay

bp = Blueprint("media", __name__)
IMAGES = Family("images", parse_response=True)
AUDIO = Family("audio")


@bp.route("/v1/images/<path:rest>", methods=["POST"])
def images(rest: str) -> Response:
    return relay(IMAGES)


@bp.route("/v1/audio/<path:rest>", methods=["POST"])
def audio(rest: str) -> Response:
    return relay(AUDIO)

"""Request ids: the client's `X-Request-ID` (or the inference gateway's `Request-Id`) when sane, else a new UUID4.

Kept in `g.request_id`, returned on every response, sent upstream by the
relay, and added to every log record made while the request is handled.
"""

from __future__ import annotations

import logging
import re
import uuid

from flask import Flask, Response, g, has_request_context, request

HEADER = "X-Request-ID"
ALIAS = "Request-Id"
_SANE = re.compile(r"^[A-Za-z0-9._:/+=@-]{1,128}$")


def current() -> str:
    if has_request_context():
        return getattr(g, "request_id", "-")
    return "-"


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = current()
        return True


def init_app(app: Flask) -> None:
    @app.before_request
    def _assign() -> None:
        environ = request.environ
        given = environ.get("HTTP_X_REQUEST_ID") or environ.get("HTTP_REQUEST_ID", "")
        g.request_id = given if _SANE.match(given) else str(uuid.uuid4())

    @app.after_request
    def _echo(response: Response) -> Response:
        response.headers[HEADER] = current()
        return response

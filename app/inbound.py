"""The Flask side of a relayed request, so the relay itself never touches Flask.

    flask.request -> `Exchange` + `Inbound` (body, socket) -> Relay.handle -> `Reply` -> flask.Response

Blueprints call `serve(family)`. Response headers are made safe for the WSGI
server here, the one place every relayed answer becomes a Flask response.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import quote

from flask import Response, current_app, g, request, stream_with_context

from .body import RequestBody, read_json_object
from .disconnect import DisconnectWatch
from .exchange import Exchange
from .relay import Family, Relay, Reply

log = logging.getLogger("cot_proxy.relay")

_PATH_SAFE = "/:@!$&'()*+,;=-._~"
_UNSAFE = re.compile("[\r\n\0]")


class Inbound:
    """The client's side of one request as the relay needs it: the body, read within
    bounds, and a watch on the client's socket."""

    def __init__(self, relay: Relay) -> None:
        req = request._get_current_object()  # type: ignore[attr-defined]
        self._environ = environ = req.environ
        self.mimetype = req.mimetype
        self.content_type = environ.get("CONTENT_TYPE", "")
        self.body = RequestBody(environ, relay.bounds)

    def json_object(self) -> dict:
        return read_json_object(self.body, self.mimetype)

    def watch(self, *, watch_client: bool = True) -> DisconnectWatch:
        return DisconnectWatch.start(self._environ, watch_client=watch_client)


def exchange(family: Family) -> Exchange:
    req = request._get_current_object()  # type: ignore[attr-defined]
    headers = request_headers(req.environ)
    headers["x-request-id"] = request_id = g.request_id
    return Exchange(
        request_id=request_id,
        family=family.name,
        method=req.method,
        path=quote(req.path.removeprefix("/v1/"), safe=_PATH_SAFE),
        query=req.query_string.decode("latin-1"),
        headers=headers,
    )


def request_headers(environ: dict) -> dict[str, str]:
    """The request's headers, names lower-cased: werkzeug's `EnvironHeaders` rule, read from the
    environ in one pass (it would title-case each name first)."""
    out = {}
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            if key not in _BODY_KEYS_HTTP:
                out[key[5:].replace("_", "-").lower()] = value
        elif key in _BODY_KEYS and value:
            out[key.replace("_", "-").lower()] = value
    return out


_BODY_KEYS = frozenset({"CONTENT_TYPE", "CONTENT_LENGTH"})
_BODY_KEYS_HTTP = frozenset({"HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"})


def serve(family: Family) -> Response:
    """Relay the current request as `family`; the done hooks run once, after the last byte."""
    relay: Relay = current_app.extensions["cot_proxy.relay"]
    ex = exchange(family)
    reply = relay.handle(family, ex, lambda: Inbound(relay))
    return to_response(relay, ex, reply)


def to_response(relay: Relay, ex: Exchange, reply: Reply) -> Response:
    body = stream_with_context(reply.body) if reply.streamed else reply.body
    response = Response(body, status=reply.status, headers=safe_headers(reply.headers))
    # Also on close: a stream the client left before it started never runs the generator.
    response.call_on_close(lambda: relay.done(ex))
    return response


def safe_headers(headers: dict[str, str]) -> dict[str, str]:
    """Headers a WSGI server can write: a value with CR, LF, NUL or non-Latin-1 characters
    (an upstream's, or one a step copied from the request) is dropped, never a 500."""
    out = {}
    for key, value in headers.items():
        value = str(value)
        try:
            value.encode("latin-1")
        except UnicodeEncodeError:
            log.warning("dropped response header %s: not Latin-1", key)
            continue
        if _UNSAFE.search(value):
            log.warning("dropped response header %s: control characters", key)
            continue
        out[key] = value
    return out

"""Errors the proxy raises, and how they become OpenAI-style responses.

    ProxyError                      any failure we answer for ourselves
    ├── ClientError                 the request is at fault (4xx)
    │   ├── InvalidRequest          400 invalid_request_error; `param` names the field
    │   ├── AuthenticationError     401 invalid_api_key: missing, wrong, revoked or expired credentials
    │   ├── PermissionDenied        403 model_not_allowed: the key may not use this model
    │   ├── NotFound                404
    │   ├── MethodNotAllowed        405
    │   ├── RequestTimeout          408 request_timeout: the body took longer than REQUEST_BODY_TIMEOUT_SECONDS
    │   ├── PayloadTooLarge         413 request_too_large: the body is over MAX_REQUEST_BYTES
    │   └── RateLimited             429 rate_limit_exceeded, with Retry-After
    │       └── QuotaExceeded       429 insufficient_quota: the key's token budget is spent (no retry)
    ├── InternalError               500 internal_error: a bug in the proxy (a step raised something
    │                                   else than a ProxyError); logged with its traceback
    ├── Overloaded                  503 overloaded: no slot within QUEUE_TIMEOUT_SECONDS, or the
    │                                   limiter's Redis is down with RATE_LIMIT_FAIL_CLOSED
    ├── Cancelled                   503 cancelled: an operator cancelled the request (`Exchange.cancel`)
    └── UpstreamError               the upstream is at fault (5xx)
        ├── UpstreamUnavailable     502 cannot connect, TLS failure
        ├── UpstreamBadResponse     502 garbage where JSON was promised, broken framing; also
        │                               `upstream_response_too_large` (MAX_RESPONSE_BYTES),
        │                               `upstream_event_too_large` (MAX_SSE_EVENT_BYTES),
        │                               `upstream_not_streaming` (no SSE for a stream request)
        └── UpstreamTimeout         504 no byte within the timeout

`ClientDisconnected` is not a `ProxyError`: nobody is left to answer.
Foreign exceptions (`requests`, `urllib3`, sockets) are mapped to this tree in
one place, the `app.upstream.mapped_errors` context manager. `register(app)` installs the single handler
that renders every one of them as `{"error": {message, type, param, code}}`. An API family with its
own error format (Anthropic's) gives the relay an `ErrorShape`; `OPENAI_ERRORS` is the default.
"""

from __future__ import annotations

from typing import Any

import orjson
from flask import Flask, Response, json
from werkzeug.exceptions import HTTPException


class ProxyError(Exception):
    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers or {}
        """Extra response headers, e.g. `Retry-After` on a 429."""
        if code is not None:
            self.code = code

    def envelope(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


class ClientError(ProxyError):
    status = 400
    type = "invalid_request_error"


class InvalidRequest(ClientError):
    status = 400


class NotFound(ClientError):
    status = 404
    code = "not_found"


class MethodNotAllowed(ClientError):
    status = 405
    code = "method_not_allowed"


class RequestTimeout(ClientError):
    status = 408
    code = "request_timeout"


class PayloadTooLarge(ClientError):
    status = 413
    code = "request_too_large"


class AuthenticationError(ClientError):
    status = 401
    code = "invalid_api_key"


class PermissionDenied(ClientError):
    status = 403
    code = "model_not_allowed"


class RateLimited(ClientError):
    status = 429
    type = "requests"
    """As OpenAI: `requests` or `tokens`, the limit that was hit."""
    code = "rate_limit_exceeded"


class QuotaExceeded(RateLimited):
    type = "insufficient_quota"
    code = "insufficient_quota"


class InternalError(ProxyError):
    status = 500
    type = "server_error"
    code = "internal_error"


class Overloaded(ProxyError):
    status = 503
    type = "server_error"
    code = "overloaded"


class Cancelled(ProxyError):
    status = 503
    type = "server_error"
    code = "cancelled"


class UpstreamError(ProxyError):
    status = 502
    type = "upstream_error"


class UpstreamUnavailable(UpstreamError):
    code = "upstream_unavailable"


class UpstreamBadResponse(UpstreamError):
    code = "upstream_bad_response"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class ClientDisconnected(Exception):
    """The client hung up; raised into the request's greenlet to stop waiting."""


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class ErrorShape:
    """How one API family writes the errors the proxy makes: OpenAI's envelope here;
    a family with another format (Anthropic's) passes a subclass as `Family.errors`."""

    def body(self, error: ProxyError) -> dict[str, Any]:
        return error.envelope()

    def event(self, error: ProxyError) -> bytes:
        """The error as one raw SSE event, for a stream whose headers are already sent."""
        return b"data: " + orjson.dumps(self.body(error)) + b"\n\n"


OPENAI_ERRORS = ErrorShape()


def error_response(error: ProxyError, shape: ErrorShape = OPENAI_ERRORS) -> Response:
    return Response(
        json.dumps(shape.body(error)), status=error.status, mimetype="application/json", headers=error.headers
    )


_HTTP_TYPES = {404: NotFound, 405: MethodNotAllowed, 413: PayloadTooLarge}


def from_http_exception(exc: HTTPException) -> ProxyError:
    cls = _HTTP_TYPES.get(exc.code or 500)
    if cls is NotFound:
        return NotFound("Unknown route; the API is served under /v1/.", code="unknown_url")
    if cls is MethodNotAllowed:
        return MethodNotAllowed("Method not allowed on this route.")
    if cls is PayloadTooLarge:
        return PayloadTooLarge("Request body is larger than MAX_REQUEST_BYTES.")
    if exc.code and exc.code < 500:
        err = ClientError(exc.description or exc.name)
        err.status = exc.code
        return err
    return InternalError("Internal error in the proxy.")


def register(app: Flask) -> None:
    """Install the one handler that renders every error as an OpenAI envelope."""

    @app.errorhandler(ProxyError)
    def _proxy_error(exc: ProxyError) -> Response:
        return error_response(exc)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        return error_response(from_http_exception(exc))

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        app.logger.exception("unhandled error")
        return error_response(InternalError("Internal error in the proxy."))

"""The one relay every API family goes through.

    request -> read + validate -> route -> transforms.request -> upstream
            -> transforms.response_headers -> body: SSE events | JSON | raw bytes -> client

Blueprints only describe their family (`Family`) and call `relay.handle`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import quote

import orjson
import requests
from flask import Response, g, request, stream_with_context

from .config import Config
from .disconnect import DisconnectWatch
from .errors import ClientDisconnected, InvalidRequest, NotFound, ProxyError, UpstreamBadResponse, error_body
from .exchange import Exchange
from .routing import Router
from .sse import Event, SSEDecoder
from .transforms import BoundPipeline, Pipeline
from .upstream import Target, Upstream, iter_decoded, iter_raw, map_requests_error

log = logging.getLogger("cot_proxy.relay")

MAX_ERROR_BODY = 1024 * 1024
_PATH_SAFE = "/:@!$&'()*+,;=-._~"
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


@dataclass(frozen=True)
class Family:
    """What the relay needs to know about one API family."""

    name: str
    json_body: bool = False
    """The request body must be a JSON object (else 400)."""
    parse_response: bool = False
    """A successful non-streamed answer is JSON: read it whole and check it."""
    validate: Callable[[dict[str, Any]], None] | None = None
    echo: Callable[[Exchange], Response] | None = None
    """How to answer with no upstream configured; None = 404 in echo mode."""


class Relay:
    def __init__(self, config: Config, router: Router, upstream: Upstream, pipeline: Pipeline) -> None:
        self.config = config
        self.router = router
        self.upstream = upstream
        self.pipeline = pipeline

    # -- request side -------------------------------------------------------

    def handle(self, family: Family, path: str | None = None) -> Response:
        ex = self._exchange(family, path)
        target = self.router.resolve(ex)
        if target is None:
            if family.echo is None:
                raise NotFound(
                    f"Echo mode (no TARGET_BASE_URL or BACKEND_URL set) does not serve /v1/{ex.path}.",
                    code="echo_mode",
                )
            return family.echo(ex)
        ex.target = target
        bound = self.pipeline.bind(ex)
        bound.request()
        return self._forward(family, ex, bound, target)

    def _exchange(self, family: Family, path: str | None) -> Exchange:
        headers = {k.lower(): v for k, v in request.headers.items()}
        ex = Exchange(
            request_id=g.request_id,
            family=family.name,
            method=request.method,
            path=path if path is not None else quote(request.path.removeprefix("/v1/"), safe=_PATH_SAFE),
            query=request.query_string.decode("latin-1"),
            headers=headers,
        )
        if family.json_body and request.method in ("POST", "PUT", "PATCH"):
            ex.body = read_json_object()
            if family.validate is not None:
                family.validate(ex.body)
            model = ex.body.get("model")
            ex.client_model = model if isinstance(model, str) else None
        ex.headers["x-request-id"] = ex.request_id
        return ex

    def _body_to_send(self, ex: Exchange) -> bytes | Iterator[bytes] | None:
        if ex.body is not None:
            ex.headers["content-type"] = "application/json"
            return orjson.dumps(ex.body)
        if request.method in ("GET", "HEAD", "DELETE", "OPTIONS") and not request.content_length:
            return None
        if request.content_length is not None:
            return SizedStream(request.stream, request.content_length)  # multipart uploads, unchanged
        return request.get_data(cache=False)

    # -- upstream -----------------------------------------------------------

    def _forward(self, family: Family, ex: Exchange, bound: BoundPipeline, target: Target) -> Response:
        body = self._body_to_send(ex)
        headers = ex.headers
        headers.update(target.headers)
        if target.api_key:
            headers["authorization"] = f"Bearer {target.api_key}"
        # A body still being streamed upstream would look like client activity.
        watch = DisconnectWatch() if isinstance(body, SizedStream) else DisconnectWatch.start(request.environ)
        started = time.monotonic()
        try:
            resp = self.upstream.send(target, ex.method, target.url(ex.path, ex.query), headers, body)
        except ClientDisconnected:
            watch.stop()
            log.info("client went away before the upstream answered", extra={"request_id": ex.request_id})
            return Response(status=499)
        except BaseException:
            watch.stop()
            raise
        try:
            return self._respond(family, ex, bound, target, resp, watch, started)
        except ClientDisconnected:
            watch.stop()
            resp.close()
            return Response(status=499)
        except BaseException:
            watch.stop()
            resp.close()
            raise

    # -- response side ------------------------------------------------------

    def _respond(
        self, family: Family, ex: Exchange, bound: BoundPipeline, target: Target,
        resp: requests.Response, watch: DisconnectWatch, started: float,
    ) -> Response:
        headers = {k.lower(): v for k, v in resp.headers.items()}
        bound.response_headers(resp.status_code, headers)
        content_type = headers.get("content-type", "")
        if resp.status_code >= 400:
            return self._error_passthrough(resp, headers, target, watch)
        if content_type.startswith("text/event-stream"):
            for key in ("content-length", "content-encoding"):
                headers.pop(key, None)
            headers.update(SSE_HEADERS)
            body = self._sse(ex, bound, resp, target, watch)
            return Response(stream_with_context(body), status=resp.status_code, headers=headers)
        if family.parse_response or bound.wants_json:
            return self._json(ex, bound, resp, headers, target, watch)
        return Response(self._raw(resp, target, watch), status=resp.status_code, headers=headers)

    def _read_all(self, resp: requests.Response, target: Target, limit: int | None = None) -> bytes:
        parts: list[bytes] = []
        size = 0
        try:
            for chunk in iter_decoded(resp):
                parts.append(chunk)
                size += len(chunk)
                if limit is not None and size >= limit:
                    break
        except ClientDisconnected:
            raise
        except Exception as exc:
            raise map_requests_error(exc, target) from None
        finally:
            resp.close()
        return b"".join(parts)

    def _json(
        self, ex: Exchange, bound: BoundPipeline, resp: requests.Response, headers: dict[str, str],
        target: Target, watch: DisconnectWatch,
    ) -> Response:
        raw = self._read_all(resp, target)
        watch.stop()
        if not raw and resp.status_code == 204:
            return Response(status=204, headers=_without_length(headers))
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UpstreamBadResponse(f"Upstream {target.origin} sent a body that is not JSON.") from None
        if bound.wants_json:
            data = bound.response_json(data)
            raw = orjson.dumps(data)
        headers = _without_length(headers)
        headers["content-type"] = "application/json"
        return Response(raw, status=resp.status_code, headers=headers)

    def _error_passthrough(
        self, resp: requests.Response, headers: dict[str, str], target: Target, watch: DisconnectWatch
    ) -> Response:
        raw = self._read_all(resp, target, limit=MAX_ERROR_BODY)
        watch.stop()
        headers = _without_length(headers)
        try:
            orjson.loads(raw)
        except orjson.JSONDecodeError:
            text = raw.decode("utf-8", "replace").strip() or resp.reason or f"HTTP {resp.status_code}"
            raw = orjson.dumps(error_body(text, "upstream_error", None, str(resp.status_code)))
            headers["content-type"] = "application/json"
        return Response(raw, status=resp.status_code, headers=headers)

    def _raw(self, resp: requests.Response, target: Target, watch: DisconnectWatch) -> Iterator[bytes]:
        try:
            yield from iter_raw(resp)
        except ClientDisconnected:
            return
        except Exception as exc:  # headers are sent: all we can do is cut the body short
            log.warning("upstream body broke off: %s", map_requests_error(exc, target).message)
        finally:
            watch.stop()
            resp.close()

    def _sse(
        self, ex: Exchange, bound: BoundPipeline, resp: requests.Response, target: Target, watch: DisconnectWatch
    ) -> Iterator[bytes]:
        decoder = SSEDecoder()
        transform = bound.touches_stream
        ended = False
        try:
            for chunk in iter_decoded(resp):
                events = decoder.feed(chunk)
                if not events:
                    continue
                if transform:
                    out: list[Event] = []
                    for event in events:
                        if event.is_done and not ended:
                            ended = True
                            out.extend(bound.stream_end())
                            out.append(event)
                        else:
                            out.extend(bound.stream_event(event))
                    payload = b"".join(e.raw for e in out)
                else:
                    payload = b"".join(e.raw for e in events)
                if payload:
                    yield payload
            if transform and not ended:
                tail = bound.stream_end()
                if tail:
                    yield b"".join(e.raw for e in tail)
        except ClientDisconnected:
            return
        except Exception as exc:
            error = exc if isinstance(exc, ProxyError) else map_requests_error(exc, target)
            log.warning("upstream stream failed: %s", error.message)
            yield Event.from_json(error.envelope()).raw
        finally:
            watch.stop()
            resp.close()


class SizedStream:
    """A request body stream with a known length, so it goes upstream with
    Content-Length rather than chunked (many model servers reject chunked uploads)."""

    def __init__(self, stream: IO[bytes], length: int) -> None:
        self._stream = stream
        self._length = length

    def __len__(self) -> int:
        return self._length

    def read(self, size: int = -1) -> bytes:
        return self._stream.read(size)


def _without_length(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k not in ("content-length", "content-encoding")}


def read_json_object() -> dict[str, Any]:
    """The request body as a JSON object, or a 400 that says what is wrong."""
    mimetype = request.mimetype
    if mimetype != "application/json" and not mimetype.endswith("+json"):
        raise InvalidRequest(
            f"Content-Type must be application/json (got {mimetype or 'none'}).", code="invalid_content_type"
        )
    raw = request.get_data(cache=False)  # over MAX_CONTENT_LENGTH: 413 from werkzeug
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"Request body is not valid JSON: {exc}.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise InvalidRequest("Request body must be a JSON object.", code="invalid_json")
    return body

"""The one relay every API family goes through.

    request -> read + validate -> admit (guards) -> route (a plan of attempts)
            -> per attempt: transforms.request -> upstream
            -> transforms.response_headers -> body: SSE events | JSON | raw bytes -> client
            -> done hooks, after the last byte

Blueprints only describe their family (`Family`) and call `Relay.handle`.
An attempt that fails before any byte reached the client (cannot connect,
timeout, 429, 5xx) moves on to the plan's next attempt; after that, never.
"""

from __future__ import annotations

import copy
import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import quote

import orjson
import requests
from flask import Response, g, request, stream_with_context
from werkzeug.exceptions import HTTPException

from .config import Config
from .disconnect import DisconnectWatch
from .errors import (
    ClientDisconnected,
    InvalidRequest,
    NotFound,
    ProxyError,
    UpstreamBadResponse,
    UpstreamError,
    error_body,
    error_response,
    from_http_exception,
)
from .exchange import Exchange
from .routing.router import Attempt, Router
from .sse import Event, SSEDecoder
from .transforms import BoundPipeline, Pipeline
from .upstream import Target, Upstream, iter_decoded, iter_raw, map_requests_error

log = logging.getLogger("cot_proxy.relay")

MAX_ERROR_BODY = 1024 * 1024
RETRY_AFTER_CAP = 10.0
_PATH_SAFE = "/:@!$&'()*+,;=-._~"
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
PROVIDER_HEADER = "x-cot-proxy-provider"


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
    local: Callable[[Exchange], Response | None] | None = None
    """An answer the proxy gives itself after admission (e.g. the model catalog); None = relay."""


def should_fall_back(status: int) -> bool:
    """429 and 5xx are worth another attempt; other 4xx are the client's fault."""
    return status == 429 or status >= 500


class Relay:
    def __init__(self, config: Config, router: Router, upstream: Upstream, pipeline: Pipeline) -> None:
        self.config = config
        self.router = router
        self.upstream = upstream
        self.pipeline = pipeline

    # -- request side -------------------------------------------------------

    def handle(self, family: Family, path: str | None = None) -> Response:
        ex = self._exchange(family, path)
        try:
            try:
                response = self._handle(family, ex)
            except HTTPException as exc:  # e.g. 413 from werkzeug while reading the body
                raise from_http_exception(exc) from None
        except ProxyError as exc:
            ex.outcome.error = exc.code or exc.type
            response = error_response(exc)
        ex.outcome.status = response.status_code
        if response.is_streamed:
            response.response = self._then_done(response.response, ex)
        else:
            ex.outcome.first_byte_at = time.monotonic()
        # Also on close: a stream the client left before it started never runs the generator.
        response.call_on_close(lambda: self._done(ex))
        return response

    def _then_done(self, body: Iterable[bytes], ex: Exchange) -> Iterator[bytes]:
        """A streamed body that runs the done hooks once its last byte is out. Not only on
        close: some WSGI servers (werkzeug's) skip close() when the client hangs up first."""
        try:
            yield from body
        finally:
            self._done(ex)

    def _done(self, ex: Exchange) -> None:
        if ex.outcome.finished_at is not None:
            return  # once per request
        ex.outcome.finished_at = time.monotonic()
        self.router.release(ex)
        self.pipeline.done(ex)

    def _handle(self, family: Family, ex: Exchange) -> Response:
        self.pipeline.authenticate(ex)
        if family.json_body and ex.method in ("POST", "PUT", "PATCH"):
            ex.body = read_json_object()
            if family.validate is not None:
                family.validate(ex.body)
            model = ex.body.get("model")
            ex.client_model = model if isinstance(model, str) else None
        self.pipeline.admit(ex)
        if family.local is not None and (answer := family.local(ex)) is not None:
            return self._local(ex, answer)
        plan = self.router.plan(ex)
        if not plan:
            if family.echo is None:
                raise NotFound(
                    f"Echo mode (no TARGET_BASE_URL or BACKEND_URL set) does not serve /v1/{ex.path}.",
                    code="echo_mode",
                )
            return self._local(ex, family.echo(ex))
        return self._forward(family, ex, plan)

    def _local(self, ex: Exchange, response: Response) -> Response:
        """An answer the proxy made itself gets the same response-header steps as an
        upstream's (rate-limit headers, scrubbing); its body is already final."""
        headers = {k.lower(): v for k, v in response.headers.items()}
        self.pipeline.bind(ex).response_headers(response.status_code, headers)
        response.headers.clear()
        response.headers.update(headers)
        return response

    def _exchange(self, family: Family, path: str | None) -> Exchange:
        headers = {k.lower(): v for k, v in request.headers.items()}
        headers["x-request-id"] = g.request_id
        return Exchange(
            request_id=g.request_id,
            family=family.name,
            method=request.method,
            path=path if path is not None else quote(request.path.removeprefix("/v1/"), safe=_PATH_SAFE),
            query=request.query_string.decode("latin-1"),
            headers=headers,
        )

    def _raw_body(self) -> bytes | SizedStream | None:
        if request.method in ("GET", "HEAD", "DELETE", "OPTIONS") and not request.content_length:
            return None
        if request.content_length is not None:
            return SizedStream(request.stream, request.content_length)  # multipart uploads, unchanged
        return request.get_data(cache=False)

    # -- upstream -----------------------------------------------------------

    def _forward(self, family: Family, ex: Exchange, plan: list[Attempt]) -> Response:
        raw_body = None if ex.body is not None else self._raw_body()
        if isinstance(raw_body, SizedStream):
            plan = plan[:1]  # a streamed upload cannot be replayed
        original_body, original_headers = ex.body, ex.headers
        # A body still being streamed upstream would look like client activity.
        watch = DisconnectWatch() if isinstance(raw_body, SizedStream) else DisconnectWatch.start(request.environ)
        retry_after: str | None = None
        try:
            for n, attempt in enumerate(plan):
                last = n == len(plan) - 1
                if n:
                    pause_before(attempt, plan[n - 1], retry_after)
                    retry_after = None
                ex.body = copy.deepcopy(original_body) if len(plan) > 1 else original_body
                ex.headers = dict(original_headers)
                bound = self._prepare(ex, attempt)
                body = orjson.dumps(ex.body) if ex.body is not None else raw_body
                self.router.begin(ex, attempt.target)
                try:
                    resp = self._send(ex, attempt.target, body)
                except UpstreamError as exc:
                    self.router.finished(ex, attempt.target, ok=False, final=False)
                    if last:
                        raise
                    ex.outcome.failures.append((attempt.target, exc.code or exc.type))
                    log.warning("attempt %s failed (%s); trying %s", attempt.label, exc.code, plan[n + 1].label)
                    continue
                except BaseException:
                    self.router.release(ex)
                    raise
                fall_back = not last and should_fall_back(resp.status_code)
                self.router.finished(ex, attempt.target, ok=resp.status_code < 500, final=not fall_back)
                if fall_back:
                    ex.outcome.failures.append((attempt.target, f"http_{resp.status_code}"))
                    log.warning("attempt %s answered %s; trying %s", attempt.label, resp.status_code,
                                plan[n + 1].label)
                    retry_after = resp.headers.get("retry-after")
                    resp.close()
                    continue
                return self._respond(family, ex, bound, attempt, resp, watch)
        except ClientDisconnected:
            watch.stop()
            ex.outcome.error = "client_disconnected"
            log.info("client went away before the upstream answered")
            return Response(status=499)
        except BaseException:
            watch.stop()
            raise
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _prepare(self, ex: Exchange, attempt: Attempt) -> BoundPipeline:
        ex.target = attempt.target
        ex.outcome.attempts.append(attempt.label)
        if attempt.model is not None and isinstance(ex.body, dict):
            ex.body["model"] = attempt.model
        bound = self.pipeline.bind(ex)
        bound.request()
        ex.headers.update(attempt.target.headers)
        if attempt.target.api_key:
            ex.headers["authorization"] = f"Bearer {attempt.target.api_key}"
        if ex.body is not None:
            ex.headers["content-type"] = "application/json"
        return bound

    def _send(self, ex: Exchange, target: Target, body: bytes | SizedStream | None) -> requests.Response:
        return self.upstream.send(target, ex.method, target.url(ex.path, ex.query), ex.headers, body)

    # -- response side ------------------------------------------------------

    def _respond(
        self, family: Family, ex: Exchange, bound: BoundPipeline, attempt: Attempt,
        resp: requests.Response, watch: DisconnectWatch,
    ) -> Response:
        target = attempt.target
        try:
            headers = {k.lower(): v for k, v in resp.headers.items()}
            bound.response_headers(resp.status_code, headers)
            headers[PROVIDER_HEADER] = attempt.label
            content_type = headers.get("content-type", "")
            if resp.status_code >= 400:
                return self._error_passthrough(resp, headers, target, watch)
            if content_type.startswith("text/event-stream"):
                for key in ("content-length", "content-encoding"):
                    headers.pop(key, None)
                headers.update(SSE_HEADERS)
                ex.outcome.streamed = True
                body = self._sse(ex, bound, resp, target, watch)
                return Response(stream_with_context(body), status=resp.status_code, headers=headers)
            if family.parse_response or bound.wants_json:
                return self._json(bound, resp, headers, target, watch)
            return Response(self._raw(ex, resp, target, watch), status=resp.status_code, headers=headers)
        except BaseException:
            resp.close()
            raise

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
        self, bound: BoundPipeline, resp: requests.Response, headers: dict[str, str],
        target: Target, watch: DisconnectWatch,
    ) -> Response:
        raw = self._read_all(resp, target)
        watch.stop()
        headers = _without_length(headers)
        if not raw and resp.status_code == 204:
            return Response(status=204, headers=headers)
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UpstreamBadResponse(f"Upstream {target.origin} sent a body that is not JSON.") from None
        if bound.wants_json:
            data = bound.response_json(data)
            raw = orjson.dumps(data)
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

    def _raw(self, ex: Exchange, resp: requests.Response, target: Target, watch: DisconnectWatch) -> Iterator[bytes]:
        try:
            for chunk in iter_raw(resp):
                if ex.outcome.first_byte_at is None:
                    ex.outcome.first_byte_at = time.monotonic()
                yield chunk
        except ClientDisconnected:
            ex.outcome.error = "client_disconnected"
        except Exception as exc:  # headers are sent: all we can do is cut the body short
            ex.outcome.error = "midstream"
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
                    if ex.outcome.first_byte_at is None:
                        ex.outcome.first_byte_at = time.monotonic()
                    yield payload
            if transform and not ended:
                tail = bound.stream_end()
                if tail:
                    yield b"".join(e.raw for e in tail)
        except ClientDisconnected:
            ex.outcome.error = "client_disconnected"
        except Exception as exc:
            error = exc if isinstance(exc, ProxyError) else map_requests_error(exc, target)
            ex.outcome.error = "midstream"
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


def pause_before(attempt: Attempt, previous: Attempt, retry_after: str | None) -> None:
    """Between retries of the same target: jittered backoff, or its Retry-After (capped)."""
    if attempt.target is not previous.target:
        return
    delay = random.uniform(0.1, 0.5)
    if retry_after is not None:
        try:
            delay = min(max(float(retry_after), 0.0), RETRY_AFTER_CAP)
        except ValueError:
            pass
    time.sleep(delay)


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

"""The one relay every API family goes through.

    request -> authenticate (headers) -> read body (bounded) + validate -> admit (guards)
            -> route (a plan of attempts)
            -> per attempt: transforms.request -> upstream
            -> transforms.response_headers -> body: SSE events | JSON | raw bytes -> client
            -> done hooks, after the last byte

Blueprints only describe their family (`Family`) and call `Relay.handle`.
An attempt that fails before any byte reached the client (cannot connect,
timeout, 429, 5xx) moves on to the plan's next attempt; after that, never.
"""

from __future__ import annotations

import copy
import itertools
import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import orjson
from flask import Response, g, request, stream_with_context
from werkzeug.exceptions import HTTPException

from .body import RequestBody, SizedStream, model_in
from .config import Config
from .disconnect import DisconnectWatch
from .errors import (
    ClientDisconnected,
    InternalError,
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
from .upstream import DECODABLE, Answer, Target, Upstream

log = logging.getLogger("cot_proxy.relay")

RETRY_AFTER_CAP = 10.0
_PATH_SAFE = "/:@!$&'()*+,;=-._~"
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
PROVIDER_HEADER = "x-cot-proxy-provider"
MAX_JSON_DEPTH = 128


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
        self.bounds = config.bounds
        self.router = router
        self.upstream = upstream
        self.pipeline = pipeline

    # -- request side -------------------------------------------------------

    def handle(self, family: Family) -> Response:
        """Every outcome becomes a response here, and the done hooks run exactly once after it."""
        ex = self._exchange(family)
        try:
            try:
                response = self._handle(family, ex)
            except HTTPException as exc:  # werkzeug's own, e.g. while parsing a form
                raise from_http_exception(exc) from None
        except ProxyError as exc:
            ex.outcome.error = exc.code or exc.type
            response = error_response(exc)
        except ClientDisconnected:
            ex.outcome.error = "client_disconnected"
            log.info("client went away before the upstream answered")
            response = Response(status=499)
        except Exception:
            log.exception("internal error while relaying %s /v1/%s", ex.method, ex.path)
            ex.outcome.error = "internal_error"
            response = error_response(InternalError("Internal error in the proxy."))
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
        try:
            self.router.release(ex)
        except Exception:
            log.exception("releasing the backend failed")
        self.pipeline.done(ex)

    def _handle(self, family: Family, ex: Exchange) -> Response:
        self.pipeline.authenticate(ex)  # from the headers: no body is read for a client we refuse
        body = RequestBody(request.environ, self.bounds)
        raw_body: bytes | SizedStream | None = None
        if family.json_body and ex.method in ("POST", "PUT", "PATCH"):
            ex.body = read_json_object(body)
            if family.validate is not None:
                family.validate(ex.body)
            model = ex.body.get("model")
            ex.client_model = model if isinstance(model, str) else None
        elif body.present:
            # A declared length streams upstream as it arrives; chunked bodies, and bodies whose
            # model a key's allow-list must see, are read whole first (within MAX_REQUEST_BYTES).
            if body.length is not None and not ex.needs_model:
                raw_body = body.stream()
            else:
                raw_body = body.read()
                if ex.needs_model:
                    ex.client_model = model_in(raw_body, ex.headers.get("content-type", ""))
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
        return self._forward(family, ex, plan, raw_body)

    def _local(self, ex: Exchange, response: Response) -> Response:
        """An answer the proxy made itself gets the same response-header steps as an
        upstream's (rate-limit headers, scrubbing); its body is already final."""
        headers = {k.lower(): v for k, v in response.headers.items()}
        self.pipeline.bind(ex).response_headers(response.status_code, headers)
        response.headers.clear()
        response.headers.update(safe_headers(headers))
        return response

    def _exchange(self, family: Family) -> Exchange:
        headers = {k.lower(): v for k, v in request.headers.items()}
        headers["x-request-id"] = g.request_id
        return Exchange(
            request_id=g.request_id,
            family=family.name,
            method=request.method,
            path=quote(request.path.removeprefix("/v1/"), safe=_PATH_SAFE),
            query=request.query_string.decode("latin-1"),
            headers=headers,
        )

    # -- upstream -----------------------------------------------------------

    def _forward(
        self, family: Family, ex: Exchange, plan: list[Attempt], raw_body: bytes | SizedStream | None,
    ) -> Response:
        if isinstance(raw_body, SizedStream):
            plan = plan[:1]  # a streamed upload cannot be replayed
        # Any answer may need reading (errors, streams): ask only for encodings this worker decodes.
        original_body, original_headers = ex.body, accept_decodable(ex.headers)
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
                body = dump_json(ex.body) if ex.body is not None else raw_body
                self.router.begin(ex, attempt.target)
                try:
                    answer = self._send(ex, attempt.target, body)
                except UpstreamError as exc:
                    self.router.finished(ex, attempt.target, ok=False, final=False)
                    if last:
                        raise
                    ex.outcome.failures.append((attempt.target, exc.code or exc.type))
                    log.warning("attempt %s failed (%s); trying %s", attempt.label, exc.code, plan[n + 1].label)
                    continue
                fall_back = not last and should_fall_back(answer.status)
                self.router.finished(ex, attempt.target, ok=answer.status < 500, final=not fall_back)
                if fall_back:
                    ex.outcome.failures.append((attempt.target, f"http_{answer.status}"))
                    log.warning("attempt %s answered %s; trying %s", attempt.label, answer.status,
                                plan[n + 1].label)
                    retry_after = answer.headers.get("retry-after")
                    answer.close()
                    continue
                return self._respond(family, ex, bound, attempt, answer, watch)
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

    def _send(self, ex: Exchange, target: Target, body: bytes | SizedStream | None) -> Answer:
        return self.upstream.send(target, ex.method, target.url(ex.path, ex.query), ex.headers, body)

    # -- response side ------------------------------------------------------

    def _respond(
        self, family: Family, ex: Exchange, bound: BoundPipeline, attempt: Attempt, answer: Answer,
        watch: DisconnectWatch,
    ) -> Response:
        try:
            headers = dict(answer.headers)
            bound.response_headers(answer.status, headers)
            headers[PROVIDER_HEADER] = attempt.label
            content_type = headers.get("content-type", "")
            reads_body = family.parse_response or bound.wants_json or ex.body is not None
            if ex.method == "HEAD":
                answer.close()
                watch.stop()
                if "content-encoding" in headers and reads_body:
                    headers = _without_length(headers)  # a GET would be answered decoded
                return reply(None, answer.status, headers)
            if answer.status >= 400:
                return self._error(answer, headers, watch)
            sse = content_type.startswith("text/event-stream")
            if ex.streaming and not sse:
                raise not_streaming(answer)
            if sse:
                headers = _without_length(headers)
                headers.update(SSE_HEADERS)
                ex.outcome.streamed = True
                chunks = answer.chunks()
                first = next(chunks, b"")  # before the headers go: a JSON body here is no stream
                if first.lstrip()[:1] in (b"{", b"[", b"<"):
                    raise not_streaming(answer)
                body = self._sse(ex, bound, answer, first, chunks, watch)
                return reply(stream_with_context(body), answer.status, headers)
            if reads_body:
                return self._json(bound, answer, headers, watch)
            return reply(self._raw(ex, answer, watch), answer.status, headers)
        except BaseException:
            answer.close()
            raise

    def _json(self, bound: BoundPipeline, answer: Answer, headers: dict[str, str], watch: DisconnectWatch) -> Response:
        raw = answer.read(self.bounds.max_response_bytes)
        watch.stop()
        headers = _without_length(headers)
        if not raw and answer.status == 204:
            return reply(None, 204, headers)
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UpstreamBadResponse(f"Upstream {answer.target.origin} sent a body that is not JSON.") from None
        if bound.wants_json:
            data = bound.response_json(data)
            raw = dump_json(data)
        headers["content-type"] = "application/json"
        return reply(raw, answer.status, headers)

    def _error(self, answer: Answer, headers: dict[str, str], watch: DisconnectWatch) -> Response:
        """An upstream error status passes with its JSON body; any other body is wrapped as `message`."""
        raw = answer.read(self.bounds.max_error_bytes, truncate=True)
        watch.stop()
        headers = _without_length(headers)
        try:
            orjson.loads(raw)
        except orjson.JSONDecodeError:
            text = raw.decode("utf-8", "replace").strip() or answer.reason or f"HTTP {answer.status}"
            raw = orjson.dumps(error_body(text, "upstream_error", None, str(answer.status)))
            headers["content-type"] = "application/json"
        return reply(raw, answer.status, headers)

    def _raw(self, ex: Exchange, answer: Answer, watch: DisconnectWatch) -> Iterator[bytes]:
        try:
            for chunk in answer.raw_chunks():
                if ex.outcome.first_byte_at is None:
                    ex.outcome.first_byte_at = time.monotonic()
                yield chunk
        except ClientDisconnected:
            ex.outcome.error = "client_disconnected"
        except ProxyError as exc:  # headers are sent: all we can do is cut the body short
            ex.outcome.error = "midstream"
            log.warning("upstream body broke off: %s", exc.message)
        finally:
            watch.stop()
            answer.close()

    @staticmethod
    def _flushed(bound: BoundPipeline, flush: bool) -> bytes:
        """What steps still hold (text held back at the start), before an error event ends the stream."""
        if not flush:
            return b""
        try:
            return b"".join(e.raw for e in bound.stream_end())
        except Exception:
            log.exception("a stream step failed while flushing")
            return b""

    def _sse(
        self, ex: Exchange, bound: BoundPipeline, answer: Answer, first: bytes, rest: Iterator[bytes],
        watch: DisconnectWatch,
    ) -> Iterator[bytes]:
        decoder = SSEDecoder(self.bounds.max_event_bytes)
        transform = bound.touches_stream
        ended = False
        try:
            for chunk in itertools.chain((first,), rest):
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
        except ProxyError as exc:
            ex.outcome.error = "midstream" if isinstance(exc, UpstreamError) else (exc.code or exc.type)
            log.warning("stream failed: %s", exc.message)
            yield self._flushed(bound, transform and not ended) + Event.from_json(exc.envelope()).raw
        except Exception:  # a bug in a step: the stream ends with one error event, counted as ours
            log.exception("internal error in a stream step")
            ex.outcome.error = "internal_error"
            yield Event.from_json(InternalError("Internal error in the proxy.").envelope()).raw
        finally:
            watch.stop()
            answer.close()


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


def read_json_object(body: RequestBody) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 that says what is wrong."""
    mimetype = request.mimetype
    if mimetype != "application/json" and not mimetype.endswith("+json"):
        raise InvalidRequest(
            f"Content-Type must be application/json (got {mimetype or 'none'}).", code="invalid_content_type"
        )
    raw = body.read()
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"Request body is not valid JSON: {exc}.", code="invalid_json") from None
    if not isinstance(obj, dict):
        raise InvalidRequest("Request body must be a JSON object.", code="invalid_json")
    # orjson writes at most 254 levels; counting brackets first keeps the usual body at C speed.
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH and json_depth(obj) > MAX_JSON_DEPTH:
        raise InvalidRequest(f"Request body is nested deeper than {MAX_JSON_DEPTH} levels.", code="invalid_json")
    return obj


def json_depth(obj: Any) -> int:
    """How deeply lists and objects nest in `obj` (iterative: no recursion limit)."""
    deepest = 0
    stack = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            value = value.values()
        elif not isinstance(value, list):
            continue
        deepest = max(deepest, depth)
        stack.extend((v, depth + 1) for v in value if isinstance(v, (dict, list)))
    return deepest


def dump_json(obj: Any) -> bytes:
    """orjson refuses what it cannot write (nesting over 254 levels, huge integers): the client's fault."""
    try:
        return orjson.dumps(obj)
    except (orjson.JSONEncodeError, TypeError) as exc:
        raise InvalidRequest(f"The request body cannot be relayed: {exc}.", code="invalid_json") from None


def not_streaming(answer: Answer) -> UpstreamBadResponse:
    return UpstreamBadResponse(f"Upstream {answer.target.origin} did not answer a stream request with "
                               "an event stream.", code="upstream_not_streaming")


def accept_decodable(headers: dict[str, str]) -> dict[str, str]:
    """The client's Accept-Encoding, less what this worker cannot decode."""
    given = headers.get("accept-encoding")
    if given is None:
        return headers
    keep = [p for p in (part.strip() for part in given.split(","))
            if p and p.split(";", 1)[0].strip().lower() in DECODABLE]
    out = dict(headers)
    if keep:
        out["accept-encoding"] = ", ".join(keep)
    else:
        out["accept-encoding"] = "identity"
    return out


def reply(body: Any, status: int, headers: dict[str, str]) -> Response:
    """Every upstream-derived answer is built here, so its headers are always made safe."""
    return Response(body, status=status, headers=safe_headers(headers))


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
        if any(c in value for c in "\r\n\0"):
            log.warning("dropped response header %s: control characters", key)
            continue
        out[key] = value
    return out

"""The one relay every API family goes through.

    authenticate (headers) -> read body (bounded) + validate -> admit (guards)
    -> route (a plan of attempts)
    -> per attempt: transforms.attempt -> transforms.request -> upstream
    -> transforms.response_headers -> body: SSE events | JSON | raw bytes -> client
    -> done hooks, after the last byte

Blueprints only describe their family (`Family`); `app.inbound` turns the Flask
request into an `Exchange` and the relay's `Reply` into a Flask response, so
nothing here touches Flask or `requests`. An attempt that fails before any byte
reached the client (cannot connect, timeout, 429, 5xx) moves on to the plan's
next attempt; after that, never.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from werkzeug.exceptions import HTTPException

from .body import RequestBody, SizedStream, dump_json, model_in
from .config import Config
from .disconnect import DisconnectWatch
from .errors import (
    OPENAI_ERRORS,
    Cancelled,
    ClientDisconnected,
    ErrorShape,
    InternalError,
    NotFound,
    ProxyError,
    UpstreamBadResponse,
    UpstreamError,
    error_body,
    from_http_exception,
)
from .exchange import Exchange
from .routing.router import Attempt, Router
from .stream import EventStream
from .transforms import BoundPipeline, Pipeline
from .upstream import Call, Upstream, UpstreamReply, accept_decodable

log = logging.getLogger("cot_proxy.relay")

RETRY_AFTER_CAP = 10.0
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
    echo: Callable[[Exchange], Any] | None = None
    """How to answer with no upstream configured (a Flask response); None = 404 in echo mode."""
    local: Callable[[Exchange], Any] | None = None
    """An answer the proxy gives itself after admission (e.g. the model catalog); None = relay."""
    errors: ErrorShape = OPENAI_ERRORS
    """How this API writes errors."""


@dataclass
class Reply:
    """What goes back to the client; `streamed` bodies are iterated as they are produced."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | Iterable[bytes] | None = None
    streamed: bool = False


class Client(Protocol):
    """The client's side of the request (`app.inbound.Inbound`)."""

    body: RequestBody
    content_type: str

    def json_object(self) -> dict[str, Any]: ...
    def watch(self, *, watch_client: bool = True) -> DisconnectWatch: ...


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

    def handle(self, family: Family, ex: Exchange, client: Callable[[], Client]) -> Reply:
        """Every outcome becomes a `Reply` here; `done(ex)` must follow once it is sent."""
        try:
            try:
                reply = self._handle(family, ex, client)
            except HTTPException as exc:  # werkzeug's own, e.g. while parsing a form
                raise from_http_exception(exc) from None
        except ProxyError as exc:
            ex.outcome.error = exc.code or exc.type
            reply = error_reply(exc, family.errors)
        except ClientDisconnected:
            ex.outcome.error = "client_disconnected"
            log.info("client went away before the upstream answered")
            reply = Reply(499)
        except Exception:
            log.exception("internal error while relaying %s /v1/%s", ex.method, ex.path)
            ex.outcome.error = "internal_error"
            reply = error_reply(InternalError("Internal error in the proxy."), family.errors)
        ex.outcome.status = reply.status
        if reply.streamed:
            reply.body = self._then_done(reply.body, ex)
        else:
            ex.outcome.first_byte_at = time.monotonic()
            ex.outcome.bytes_out = len(reply.body) if isinstance(reply.body, bytes) else 0
        return reply

    def _then_done(self, body: Iterable[bytes], ex: Exchange) -> Iterator[bytes]:
        """Runs the done hooks once the last byte is out. Not only on close: some WSGI
        servers (werkzeug's) skip close() when the client hangs up first."""
        try:
            yield from body
        finally:
            self.done(ex)

    def done(self, ex: Exchange) -> None:
        """Once per request, after its last byte (or the client left)."""
        if ex.outcome.finished_at is not None:
            return
        ex.outcome.finished_at = time.monotonic()
        ex.interrupt = None
        try:
            self.router.release(ex)
        except Exception:
            log.exception("releasing the backend failed")
        self.pipeline.done(ex)

    # -- request side -------------------------------------------------------

    def _handle(self, family: Family, ex: Exchange, client_side: Callable[[], Client]) -> Reply:
        self.pipeline.authenticate(ex)  # from the headers: no body is read for a client we refuse
        client = client_side()
        body = self._read(family, ex, client)
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
        return self._forward(family, ex, plan, client, body)

    def _read(self, family: Family, ex: Exchange, client: Client) -> bytes | SizedStream | None:
        """JSON families parse into `ex.body`; any other body is returned to go upstream as it is."""
        if family.json_body and ex.method in ("POST", "PUT", "PATCH"):
            ex.body = client.json_object()
            if family.validate is not None:
                family.validate(ex.body)
            model = ex.body.get("model")
            ex.client_model = model if isinstance(model, str) else None
            return None
        body = client.body
        if not body.present:
            return None
        # A declared length streams upstream as it arrives; chunked bodies, and bodies whose
        # model a key's allow-list must see, are read whole first (within MAX_REQUEST_BYTES).
        if body.length is not None and not ex.needs_model:
            return body.stream()
        raw = body.read()
        if ex.needs_model:
            ex.client_model = model_in(raw, client.content_type)
        return raw

    def _local(self, ex: Exchange, response: Any) -> Reply:
        """An answer the proxy made itself (a Flask response) gets the same response-header
        steps as an upstream's (rate-limit headers, scrubbing); its body is already final."""
        headers = {k.lower(): v for k, v in response.headers.items()}
        self.pipeline.bind(ex).response_headers(response.status_code, headers)
        if response.is_streamed:
            return Reply(response.status_code, headers, response.response, streamed=True)
        return Reply(response.status_code, headers, response.get_data())

    # -- upstream -----------------------------------------------------------

    def _forward(
        self,
        family: Family,
        ex: Exchange,
        plan: list[Attempt],
        client: Client,
        body: bytes | SizedStream | None,
    ) -> Reply:
        if isinstance(body, SizedStream):
            plan = plan[:1]  # a streamed upload cannot be replayed
        # A later attempt re-parses the client's JSON bytes (read once, kept by RequestBody): nothing
        # is copied or serialised for the usual single attempt. Any answer may need reading (errors,
        # streams): ask only for encodings this worker decodes.
        sent = _Sent(
            ex.family,
            ex.path,
            ex.query,
            client.body.read() if ex.body is not None else None,
            accept_decodable(ex.headers),
        )
        retry_after: str | None = None
        for n, attempt in enumerate(plan):
            last = n == len(plan) - 1
            if n:
                pause_before(attempt, plan[n - 1], retry_after)
                retry_after = None
            try:
                bound, reply = self._attempt(ex, attempt, sent, client, body)
            except UpstreamError as exc:
                if last:
                    raise
                ex.outcome.failures.append((attempt.target, exc.code or exc.type))
                log.warning("attempt %s failed (%s); trying %s", attempt.label, exc.code, plan[n + 1].label)
                continue
            fall_back = not last and should_fall_back(reply.status)
            self.router.finished(ex, attempt.target, ok=reply.status < 500, final=not fall_back)
            if fall_back:
                ex.outcome.failures.append((attempt.target, f"http_{reply.status}"))
                log.warning("attempt %s answered %s; trying %s", attempt.label, reply.status, plan[n + 1].label)
                retry_after = reply.headers.get("retry-after")
                reply.close()
                continue
            return self._respond(family, ex, bound, attempt, reply)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _attempt(
        self,
        ex: Exchange,
        attempt: Attempt,
        sent: _Sent,
        client: Client,
        body: bytes | SizedStream | None,
    ) -> tuple[BoundPipeline, UpstreamReply]:
        """One attempt, sent again once if a step asks (`resend`, e.g. to translate after a 404)."""
        resent = False
        while True:
            sent.restore(ex, first=not ex.outcome.attempts)
            bound = self._prepare(ex, attempt)
            payload = dump_json(ex.body) if ex.body is not None else body
            self.router.begin(ex, attempt.target)
            watch = client.watch(watch_client=not isinstance(body, SizedStream))
            reply = self._send(ex, attempt.target, payload, watch)
            if resent or not bound.resend(reply.status):
                return bound, reply
            resent = True
            self.router.finished(ex, attempt.target, ok=True, final=False)
            reply.close()

    def _prepare(self, ex: Exchange, attempt: Attempt) -> BoundPipeline:
        ex.target = attempt.target
        ex.outcome.attempts.append(attempt.label)
        if attempt.model is not None and isinstance(ex.body, dict):
            ex.body["model"] = attempt.model
        self.pipeline.attempt(ex)
        bound = self.pipeline.bind(ex)
        bound.request()
        ex.headers.update(attempt.target.headers)
        if attempt.target.api_key:
            ex.headers["authorization"] = f"Bearer {attempt.target.api_key}"
        if ex.body is not None:
            ex.headers["content-type"] = "application/json"
        return bound

    def _send(self, ex: Exchange, target: Any, payload: Any, watch: DisconnectWatch) -> UpstreamReply:
        """The upstream call; `ex.cancel()` shuts its connection wherever it waits."""
        call = Call()
        ex.interrupt = call.abort
        try:
            if ex.cancelled:
                raise cancelled()
            reply = self.upstream.send(
                target, ex.method, target.url(ex.path, ex.query), ex.headers, payload, watch=watch, call=call
            )
        except UpstreamError as exc:
            self.router.finished(ex, target, ok=False, final=False)
            if ex.cancelled:
                raise cancelled() from exc
            raise
        if ex.cancelled:
            reply.close()
            raise cancelled()
        return reply

    # -- response side ------------------------------------------------------

    def _respond(
        self,
        family: Family,
        ex: Exchange,
        bound: BoundPipeline,
        attempt: Attempt,
        reply: UpstreamReply,
    ) -> Reply:
        try:
            headers = dict(reply.headers)
            bound.response_headers(reply.status, headers)
            headers[PROVIDER_HEADER] = attempt.label
            reads_body = family.parse_response or bound.wants_json or ex.body is not None
            if ex.method == "HEAD":
                reply.close()
                if "content-encoding" in headers and reads_body:
                    headers = _without_length(headers)  # a GET would be answered decoded
                return Reply(reply.status, headers)
            if reply.status >= 400:
                return self._error(bound, reply, headers)
            sse = headers.get("content-type", "").startswith("text/event-stream")
            if ex.streaming and not sse:
                raise not_streaming(reply)
            if sse:
                headers = _without_length(headers)
                headers.update(SSE_HEADERS)
                ex.outcome.streamed = True
                chunks = reply.chunks()
                first = next(chunks, b"")  # before the headers go: a JSON body here is no stream
                if first.lstrip()[:1] in (b"{", b"[", b"<"):
                    raise not_streaming(reply)
                events = EventStream(bound, self.bounds.max_event_bytes)
                return Reply(
                    reply.status,
                    headers,
                    self._stream(ex, reply, _chain(first, chunks), events, family.errors),
                    streamed=True,
                )
            if reads_body:
                return self._json(bound, reply, headers)
            return Reply(reply.status, headers, self._stream(ex, reply, reply.raw_chunks()), streamed=True)
        except BaseException:
            reply.close()
            raise

    def _json(self, bound: BoundPipeline, reply: UpstreamReply, headers: dict[str, str]) -> Reply:
        raw = reply.read_all(self.bounds.max_response_bytes)
        headers = _without_length(headers)
        if not raw and reply.status == 204:
            return Reply(204, headers)
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UpstreamBadResponse(f"Upstream {reply.target.origin} sent a body that is not JSON.") from None
        if bound.wants_json:
            raw = dump_json(bound.response_json(data))
        headers["content-type"] = "application/json"
        return Reply(reply.status, headers, raw)

    def _error(self, bound: BoundPipeline, reply: UpstreamReply, headers: dict[str, str]) -> Reply:
        """An upstream error status passes with its JSON body; any other body is wrapped as `message`."""
        raw = reply.read_all(self.bounds.max_error_bytes, truncate=True)
        headers = _without_length(headers)
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            text = raw.decode("utf-8", "replace").strip() or reply.reason or f"HTTP {reply.status}"
            data = error_body(text, "upstream_error", None, str(reply.status))
            raw = orjson.dumps(data)
            headers["content-type"] = "application/json"
        if bound.touches_errors:
            raw = dump_json(bound.error_json(reply.status, data))
            headers["content-type"] = "application/json"
        return Reply(reply.status, headers, raw)

    def _stream(
        self,
        ex: Exchange,
        reply: UpstreamReply,
        chunks: Iterator[bytes],
        events: EventStream | None = None,
        errors: ErrorShape = OPENAI_ERRORS,
    ) -> Iterator[bytes]:
        """The one loop that sends a body: SSE through the stream steps (`events`) or raw bytes.
        Once the headers are out an error can only end the body: in-band for SSE, cut for raw."""
        try:
            for chunk in chunks:
                out = events.feed(chunk) if events is not None else chunk
                if out:
                    self._sent(ex, out)
                    yield out
            if ex.cancelled:  # an aborted body may look like a clean end
                raise cancelled()
            if events is not None and (tail := events.end()):
                self._sent(ex, tail)
                yield tail
        except ClientDisconnected:
            ex.outcome.error = "client_disconnected"
        except ProxyError as exc:
            error = cancelled() if ex.cancelled else exc
            ex.outcome.error = "midstream" if isinstance(error, UpstreamError) else (error.code or error.type)
            log.warning("%s body ended early: %s", "stream" if events else "upstream", error.message)
            if events is not None:
                yield events.flushed() + errors.event(error)
        except Exception:  # a bug in a step: a stream ends with one error event, counted as ours
            log.exception("internal error while sending a body")
            ex.outcome.error = "internal_error"
            if events is not None:
                yield errors.event(InternalError("Internal error in the proxy."))
        finally:
            ex.interrupt = None
            reply.close()

    @staticmethod
    def _sent(ex: Exchange, data: bytes) -> None:
        if ex.outcome.first_byte_at is None:
            ex.outcome.first_byte_at = time.monotonic()
        ex.outcome.bytes_out += len(data)


@dataclass
class _Sent:
    """The request as the client sent it (after admission), restored before each attempt."""

    family: str
    path: str
    query: str
    body: bytes | None
    headers: dict[str, str]

    def restore(self, ex: Exchange, *, first: bool) -> None:
        ex.family, ex.path, ex.query, ex.headers = self.family, self.path, self.query, dict(self.headers)
        if not first and self.body is not None:
            ex.body = orjson.loads(self.body)


def _chain(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    yield first
    yield from rest


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


def not_streaming(reply: UpstreamReply) -> UpstreamBadResponse:
    return UpstreamBadResponse(
        f"Upstream {reply.target.origin} did not answer a stream request with an event stream.",
        code="upstream_not_streaming",
    )


def cancelled() -> Cancelled:
    return Cancelled("The request was cancelled by an operator.")


def error_reply(exc: ProxyError, shape: ErrorShape = OPENAI_ERRORS) -> Reply:
    headers = {"content-type": "application/json", **{k.lower(): v for k, v in exc.headers.items()}}
    return Reply(exc.status, headers, orjson.dumps(shape.body(exc)))

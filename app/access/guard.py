"""`AccessGuard`: the transform that authenticates, checks and limits requests, and accounts for them.

`authenticate`, from the headers before the body is read:
  1. authenticate (401)       bearer token / virtual key / JWT, on every relayed route and method
                              (the open probes and GET /v1/metadata never reach the relay)
`admit`, after the body is read, before routing, in this order (each step may refuse):
  2. model allowed (403)      the key's model globs against the model the request names
                              (JSON `model`, or the multipart/form `model` field, on any route)
  3. strict input checks (400) app/validation.py `strict`, unless STRICT_VALIDATION=false
  4. per-key limits (429)     budget, concurrency, requests/min, tokens/min (prompt estimate)
  5. global slot (503)        MAX_CONCURRENT_REQUESTS, waiting up to QUEUE_TIMEOUT_SECONDS
`request`: the client's Authorization never goes upstream when auth is on.
`response_headers`: `x-ratelimit-*` as OpenAI sends them.
`done`: free the slots, replace the token estimate by the real usage, queue the usage record.

`OutputCount` sits next to it and counts generated characters, so a response
without `usage` can still be estimated (the record then says `estimated`).
"""

from __future__ import annotations

import fnmatch
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import validation
from ..config import Config
from ..errors import Overloaded, PermissionDenied, ProxyError, QuotaExceeded, RateLimited
from ..exchange import Exchange
from ..sse import Event
from ..transforms.base import Transform
from .auth import Authenticator, Identity
from .keys import now_utc
from .limits import (
    Decision,
    Limiter,
    LimiterUnavailable,
    MemoryLimiter,
    RedisLimiter,
    Ticket,
    reset_duration,
    retry_after_seconds,
)
from .queue import SlotQueue
from .settings import AccessSettings

if TYPE_CHECKING:
    from .store import KeyStore
from .usage import UsageWriter, estimate_prompt_tokens, estimate_reserve, estimate_text_tokens, output_chars

log = logging.getLogger("cot_proxy.guard")

TOKEN_FAMILIES = frozenset({"chat", "completions", "embeddings", "messages", "responses"})
GENERATION = frozenset({"chat", "completions", "messages", "responses"})
FAIL_OPEN_LOG_EVERY = 10.0

try:  # metrics are optional: the observability module may or may not export the default registry
    from prometheus_client import Counter

    FAIL_OPEN = Counter("cot_proxy_rate_limit_fail_open", "Requests let through because the limiter was unreachable")
    REFUSED = Counter("cot_proxy_access_refused", "Requests refused by the access guard", ["reason"])
except Exception:  # pragma: no cover - prometheus_client missing or names already registered
    FAIL_OPEN = REFUSED = None


def _count_refusal(reason: str) -> None:
    if REFUSED is not None:
        REFUSED.labels(reason=reason).inc()


@dataclass
class Admission:
    """What the guard knows of one request, from authentication to `done`."""

    identity: Identity
    estimate: int = 0
    """Prompt tokens estimated from the body (the budget's and the token limit's first guess)."""
    admitted: bool = False
    ticket: Ticket | None = None
    """The limiter's hold, released in `done` with the tokens really used."""
    decision: Decision | None = None
    slot: bool = False
    """A concurrency slot (MAX_CONCURRENT_REQUESTS) is held."""
    recorded: bool = False
    """The usage row is queued (at a stream's end, before `[DONE]` goes out, or in `done`)."""


class AccessGuard(Transform):
    name = "access"

    def __init__(self, config: Config) -> None:
        self.settings: AccessSettings = config.access
        s = self.settings
        self._store: KeyStore | None = None
        self._store_lock = threading.Lock()
        self.auth = Authenticator(s, self.store)
        lease_seconds = max(config.read_timeout + 60.0, 300.0)
        self.limiter: Limiter = (
            RedisLimiter(s.redis_url, s.redis_prefix, lease_seconds, timeout=s.redis_timeout)
            if s.redis_url
            else MemoryLimiter(lease_seconds=lease_seconds)
        )
        self.queue = (
            SlotQueue(s.max_concurrent_requests, s.max_queued_requests, s.queue_timeout)
            if s.max_concurrent_requests
            else None
        )
        self.writer = (
            UsageWriter(lambda records: self.store().add_usage(records), s.usage_flush_seconds)
            if s.usage_accounting
            else None
        )
        self.fail_open_total = 0
        self._fail_open_logged = -1e9
        self._release_failed_logged = -1e9

    def store(self) -> KeyStore:
        """The key store, opened on first use (a proxy with no keys and no accounting never opens it)."""
        if self._store is None:
            with self._store_lock:
                if self._store is None:
                    from .store import KeyStore  # SQLAlchemy only when virtual keys are on

                    self._store = KeyStore(self.settings.database_url)
        return self._store

    # -- admit ----------------------------------------------------------------

    def authenticate(self, ex: Exchange) -> None:
        identity = self.auth.authenticate(ex.headers)
        # Known from here on, also to observers (access log) if a later check refuses; `admitted` is set last.
        ex.state[self.name] = Admission(identity)
        ex.identity = identity
        if identity.models is not None:
            ex.needs_model = True

    def admit(self, ex: Exchange) -> None:
        state: Admission = ex.state[self.name]
        identity = state.identity
        self._check_model(identity, ex.client_model, ex.family)
        if self.settings.strict_validation:
            validation.strict(
                ex.family, ex.body, max_tokens_cap=self.settings.max_tokens_cap, max_n=self.settings.max_n
            )
        if ex.family in TOKEN_FAMILIES:
            state.estimate = estimate_prompt_tokens(ex.family, ex.body)
        if identity.limits.any:
            # Against a budget, hold what the request may spend (prompt + max_tokens x n), settled in `done`.
            reserve = (
                estimate_reserve(
                    ex.family, ex.body, state.estimate, cap=self.settings.max_tokens_cap, max_n=self.settings.max_n
                )
                if identity.limits.budget
                else 0
            )
            ticket = Ticket(
                identity.subject,
                identity.limits,
                state.estimate,
                spent_at_lookup=identity.spent_tokens,
                reserve=reserve,
            )
            decision = self._limit(ticket)
            if decision is not None:
                if not decision.allowed:
                    _count_refusal(decision.reason or "limit")
                    raise self._refusal(decision, identity, ticket)
                state.ticket, state.decision = ticket, decision
        if self.queue is not None:
            try:
                self.queue.acquire()
            except Overloaded:
                _count_refusal("overloaded")
                if state.ticket is not None:
                    self._release(state.ticket, 0)
                    state.ticket = None
                raise
            state.slot = True
        state.admitted = True
        if ex.family in GENERATION and (self.writer is not None or state.ticket is not None):
            ex.state[OutputCount.name] = 0

    def _check_model(self, identity: Identity, model: str | None, family: str) -> None:
        if identity.models is None or family == "models":
            return
        allowed = ", ".join(identity.models) or "none"
        if model is None:
            if family in TOKEN_FAMILIES:
                raise PermissionDenied(
                    f"This key may use only these models: {allowed}; name one in 'model'.", param="model"
                )
            return
        if not any(fnmatch.fnmatchcase(model, pattern) for pattern in identity.models):
            _count_refusal("model")
            raise PermissionDenied(f"This key may not use model {model!r} (allowed: {allowed}).", param="model")

    def _limit(self, ticket: Ticket) -> Decision | None:
        """The limiter's decision; None if it is unreachable and we fail open."""
        try:
            return self.limiter.admit(ticket)
        except LimiterUnavailable as exc:
            now = time.monotonic()
            if self.settings.fail_closed:
                _count_refusal("limiter_unavailable")
                if now - self._fail_open_logged >= FAIL_OPEN_LOG_EVERY:  # at most every 10 s, like fail-open
                    self._fail_open_logged = now
                    log.error("rate limiter unreachable, refusing (RATE_LIMIT_FAIL_CLOSED): %s", exc)
                raise Overloaded(
                    "The rate limiter is unavailable; retry shortly.",
                    code="rate_limiter_unavailable",
                    headers={"Retry-After": "1"},
                ) from None
            self.fail_open_total += 1
            if FAIL_OPEN is not None:
                FAIL_OPEN.inc()
            if now - self._fail_open_logged >= FAIL_OPEN_LOG_EVERY:
                self._fail_open_logged = now
                log.warning(
                    "rate limiter unreachable, serving without limits (fail-open; %d so far): %s",
                    self.fail_open_total,
                    exc,
                )
            return None

    def _refusal(self, d: Decision, identity: Identity, ticket: Ticket) -> ProxyError:
        lim = ticket.limits
        if d.reason == "budget":
            left = d.remaining_budget or 0
            if left <= 0:
                message = (
                    f"The token budget of {lim.budget} for key {identity.name!r} is spent "
                    "(counting what requests in flight may still use)."
                )
            else:
                asked = (
                    f"this request may use up to {ticket.hold} tokens (about {ticket.estimate} of prompt"
                    + (" plus max_tokens); lower max_tokens" if ticket.hold > ticket.estimate else ")")
                    + " or raise the budget"
                )
                message = (
                    f"Only {left} tokens of the {lim.budget}-token budget for key {identity.name!r} remain "
                    f"(counting what requests in flight may still use), but {asked}."
                )
            return QuotaExceeded(message, headers={"x-should-retry": "false"})
        if d.reason == "too_large":
            err = RateLimited(
                f"Request too large: about {ticket.estimate} prompt tokens, but key "
                f"{identity.name!r} allows {lim.tpm} tokens per minute.",
                headers={"x-should-retry": "false"},
            )
            err.type = "tokens"
            return err
        headers = {"Retry-After": retry_after_seconds(d.retry_after_ms), "retry-after-ms": str(d.retry_after_ms)}
        headers.update(self._limit_headers(lim, d))
        if d.reason == "concurrency":
            return RateLimited(
                f"Too many concurrent requests for key {identity.name!r} (limit {lim.concurrency}).", headers=headers
            )
        wait = f"{d.retry_after_ms / 1000:.1f}"
        if d.reason == "tokens":
            err = RateLimited(
                f"Rate limit reached for key {identity.name!r}: {lim.tpm} tokens per minute. Try again in {wait}s.",
                headers=headers,
            )
            err.type = "tokens"
            return err
        return RateLimited(
            f"Rate limit reached for key {identity.name!r}: {lim.rpm} requests per minute. Try again in {wait}s.",
            headers=headers,
        )

    @staticmethod
    def _limit_headers(lim: Any, d: Decision) -> dict[str, str]:
        headers: dict[str, str] = {}
        if lim.rpm:
            headers["x-ratelimit-limit-requests"] = str(lim.rpm)
            if d.remaining_requests is not None:
                headers["x-ratelimit-remaining-requests"] = str(max(d.remaining_requests, 0))
                headers["x-ratelimit-reset-requests"] = reset_duration(d.reset_requests_ms)
        if lim.tpm:
            headers["x-ratelimit-limit-tokens"] = str(lim.tpm)
            if d.remaining_tokens is not None:
                headers["x-ratelimit-remaining-tokens"] = str(max(d.remaining_tokens, 0))
                headers["x-ratelimit-reset-tokens"] = reset_duration(d.reset_tokens_ms)
        return headers

    # -- on the way out and back -------------------------------------------------

    def request(self, ex: Exchange) -> None:
        if self.settings.auth_enabled:
            ex.headers.pop("authorization", None)  # the relay adds the provider's key after this
            ex.headers.pop("x-api-key", None)  # the same credential, Anthropic's way

    def response_headers(self, ex: Exchange, status: int, headers: dict[str, str]) -> None:
        state: Admission | None = ex.state.get(self.name)
        if state is not None and state.decision is not None and state.ticket is not None:
            headers.update(self._limit_headers(state.ticket.limits, state.decision))

    def wants_json(self, ex: Exchange) -> bool:
        state: Admission | None = ex.state.get(self.name)
        return ex.family == "models" and state is not None and state.identity.models is not None

    def response_json(self, ex: Exchange, data: Any) -> Any:
        """`GET /v1/models` lists only the models the key may use."""
        state: Admission | None = ex.state.get(self.name)
        models = state.identity.models if state is not None else None
        if models is None or ex.family != "models":
            return data
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data["data"] = [
                m
                for m in data["data"]
                if not isinstance(m, dict)
                or not isinstance(m.get("id"), str)
                or any(fnmatch.fnmatchcase(m["id"], p) for p in models)
            ]
        return data

    # -- done -----------------------------------------------------------------

    def done(self, ex: Exchange) -> None:
        state: Admission | None = ex.state.get(self.name)
        if state is None:
            return
        try:
            prompt, completion, total, estimated = tokens_used(ex, state.estimate)
            ticket, state.ticket = state.ticket, None
            if ticket is not None:
                self._release(ticket, total)
        finally:
            if state.slot:  # last: a free slot means this request is fully released
                state.slot = False
                self.queue.release()
        self.record_usage(ex, (prompt, completion, total, estimated))

    def record_usage(self, ex: Exchange, used: tuple[int, int, int, bool] | None = None) -> None:
        """Queue the request's usage row, once: in `done`, or for a stream from `OutputCount.stream_end`,
        before its `[DONE]` reaches the client (a replica killed after that can no longer leave a
        finished stream unrecorded, or recorded twice after the client's retry)."""
        state: Admission | None = ex.state.get(self.name)
        if self.writer is None or state is None or not state.admitted or state.recorded:
            return
        state.recorded = True
        prompt, completion, total, estimated = used or tokens_used(ex, state.estimate)
        self.writer.record(self._usage_record(ex, state.identity, prompt, completion, total, estimated))

    def _release(self, ticket: Ticket, tokens: int | None) -> None:
        try:
            self.limiter.release(ticket, tokens)
        except LimiterUnavailable as exc:
            now = time.monotonic()
            if now - self._release_failed_logged >= FAIL_OPEN_LOG_EVERY:
                self._release_failed_logged = now
                log.warning(
                    "rate limiter unreachable at release (applied when it answers again, else its lease expires): %s",
                    exc,
                )

    @staticmethod
    def _usage_record(
        ex: Exchange, identity: Identity, prompt: int, completion: int, total: int, estimated: bool
    ) -> dict[str, Any]:
        model = ex.client_model
        if model is None and isinstance(ex.body, dict) and isinstance(ex.body.get("model"), str):
            model = ex.body["model"]
        attempts = ex.outcome.attempts
        provider = attempts[-1] if attempts else ("echo" if ex.outcome.status < 400 else None)
        return {
            "created_at": now_utc(),
            "request_id": ex.request_id[:128],
            "key_id": identity.key_id,
            "key_name": identity.name[:200],
            "model": (model or "")[:200] or None,
            "provider": provider,
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": total,
            "estimated": estimated,
            "streamed": ex.outcome.streamed,
            "status": ex.outcome.status,
            "latency_ms": int(round(ex.outcome.duration * 1000)),
        }

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self._store is not None:
            self._store.close()


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def tokens_used(ex: Exchange, prompt_estimate: int) -> tuple[int, int, int, bool]:
    """(prompt, completion, total, estimated): the upstream's usage, else an estimate.

    A request that failed before any output (an error status, nothing streamed) used no tokens."""
    usage = ex.usage if isinstance(ex.usage, dict) else None
    if usage is not None:
        prompt = _int(usage.get("prompt_tokens", usage.get("input_tokens"))) or 0
        completion = _int(usage.get("completion_tokens", usage.get("output_tokens"))) or 0
        total = _int(usage.get("total_tokens"))
        return prompt, completion, total if total is not None else prompt + completion, False
    chars = ex.state.get(OutputCount.name, 0)
    if ex.family not in TOKEN_FAMILIES or (not chars and (ex.outcome.status >= 400 or ex.outcome.error)):
        return 0, 0, 0, False
    completion = estimate_text_tokens(chars)
    return prompt_estimate, completion, prompt_estimate + completion, True


class OutputCount(Transform):
    """Counts generated characters (streamed or not), for the estimate when no `usage` comes back."""

    name = "access_output"

    def __init__(self, guard: AccessGuard) -> None:
        self.guard = guard

    def applies(self, ex: Exchange) -> bool:
        return ex.family in GENERATION and self.name in ex.state

    def response_json(self, ex: Exchange, data: Any) -> Any:
        if self.name in ex.state:
            ex.state[self.name] = output_chars(data)
        return data

    def stream_event(self, ex: Exchange, event: Event) -> Iterable[Event]:
        obj = event.json()
        if isinstance(obj, dict) and self.name in ex.state:
            ex.state[self.name] += output_chars(obj)
        return (event,)

    def stream_end(self, ex: Exchange) -> Iterable[Event]:
        """The generated text is all counted here: the usage row can be queued (see `record_usage`)."""
        self.guard.record_usage(ex)
        return ()


def access_transforms(config: Config) -> list[Transform]:
    """The transforms to put first in the pipeline."""
    guard = AccessGuard(config)
    return [guard, OutputCount(guard)]

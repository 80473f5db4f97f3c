"""Per-key limits: requests and tokens per minute, concurrent requests, a token budget.

Algorithm: an exact sliding window of 60 s (a log of timestamps), so "N per
minute" means at most N in any 60 s, and the refusal's Retry-After is the
moment the oldest counted request leaves the window. Tokens are reserved at
admission with an estimate (the prompt) and the reservation is replaced by
the real usage when the response ends (`release`).

Budget (total tokens over a key's life): a request reserves what it may spend
(`Ticket.reserve`: prompt estimate + max_tokens x n, at least 1 token) and is
admitted only if that fits in budget - spent - reserved; at `release` the
reservation goes and the real usage is added to `spent`. So a burst cannot
overshoot: while every request uses no more than it reserved, the admitted
requests' usage never exceeds the budget. A request without max_tokens
reserves only its prompt, so the budget can be exceeded by at most what the
requests then in flight generate. `spent` never drops below the key store's
figure (`Ticket.spent_at_lookup`: every worker's flushed usage). A reservation
whose request never ends (its worker died) expires with the lease.

State lives in one of:
- `MemoryLimiter`: this worker's memory (limits then hold per worker);
- `RedisLimiter`: Redis, with each check-and-record done by one Lua script
  (atomic, so exact across all workers and replicas; Redis's clock is the one
  clock). Keys of one subject share a hash tag, so Redis Cluster works too.

A Redis failure raises `LimiterUnavailable`; the guard then serves (fail-open)
or refuses (fail-closed). Every Redis call is bounded by REDIS_TIMEOUT_SECONDS
(connect and read, default 0.25 s, no retries), and after a failure a `Circuit`
skips Redis for a back-off (1 s, doubling to 30 s, then one probe), so while
Redis is down or hung the answer comes at once instead of after a timeout per
request. Releases missed meanwhile are kept (bounded) and applied when Redis
answers again; the lease expiry is the backstop.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

log = logging.getLogger("cot_proxy.guard")

WINDOW_MS = 60_000
REDIS_TIMEOUT_SECONDS = 0.25
"""Default bound on connecting to Redis and on each reply (REDIS_TIMEOUT_SECONDS)."""
BACKOFF_FIRST_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 30.0
MAX_PENDING_RELEASES = 10_000

T = TypeVar("T")


@dataclass(frozen=True)
class Limits:
    """What one caller may do; None or 0 = no limit."""

    rpm: int | None = None
    tpm: int | None = None
    concurrency: int | None = None
    budget: int | None = None
    """Total tokens, over the key's life."""

    @property
    def any(self) -> bool:
        return bool(self.rpm or self.tpm or self.concurrency or self.budget)


@dataclass
class Decision:
    allowed: bool
    reason: str | None = None
    """Why refused: `requests`, `tokens`, `too_large`, `concurrency` or `budget`."""
    retry_after_ms: int = 0
    remaining_budget: int | None = None
    """Tokens of the budget neither spent nor reserved (after this request's reservation if admitted)."""
    remaining_requests: int | None = None
    reset_requests_ms: int = 0
    remaining_tokens: int | None = None
    reset_tokens_ms: int = 0


@dataclass
class Ticket:
    """An admitted request's hold on its subject's counters, handed back to `release`."""

    subject: str
    limits: Limits
    estimate: int
    lease: str = field(default_factory=lambda: uuid.uuid4().hex)
    spent_at_lookup: int = 0
    reserve: int = 0
    """What the request may spend, held against the budget while it runs (at least 1 is held)."""

    @property
    def hold(self) -> int:
        return max(self.reserve, 1)


class LimiterUnavailable(Exception):
    """The shared limit store (Redis) cannot be reached."""


class Circuit:
    """Skip a failing service for a while instead of waiting for its timeout on every call.

    Closed, every call goes through. A failure opens it for a back-off (1 s, doubling with each
    failure in a row, at most 30 s): `allow()` is then False at once. When the back-off is over, one
    call (the probe) is let through: success closes the circuit, failure opens it for twice as long.
    Calls already in flight when it opened do not lengthen the back-off."""

    def __init__(
        self,
        name: str,
        first: float = BACKOFF_FIRST_SECONDS,
        most: float = BACKOFF_MAX_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        logger: logging.Logger = log,
    ) -> None:
        self.name = name
        self.log = logger
        self.first = first
        self.most = most
        self.clock = clock
        self.failures = 0
        """Failures in a row; 0 = closed."""
        self.open_until = 0.0
        self._probe_since: float | None = None
        self._lock = threading.Lock()

    def allow(self) -> bool:
        if not self.failures:
            return True
        with self._lock:
            if not self.failures:
                return True
            now = self.clock()
            if now < self.open_until:
                return False
            if self._probe_since is not None and now - self._probe_since < self.most:
                return False  # one probe at a time (a lost probe is replaced after `most`)
            self._probe_since = now
            return True

    def retry_in(self) -> float:
        return max(self.open_until - self.clock(), 0.0)

    def succeeded(self) -> None:
        if not self.failures:
            return
        with self._lock:
            if self.failures:
                self.log.warning("%s answers again after %d failed attempt(s)", self.name, self.failures)
            self.failures = 0
            self._probe_since = None

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            now = self.clock()
            if self.failures and self._probe_since is None and now < self.open_until:
                return  # started before the circuit opened: already counted
            self.failures += 1
            backoff = min(self.first * 2 ** min(self.failures - 1, 30), self.most)
            self.open_until = now + backoff
            self._probe_since = None
        self.log.warning("%s unreachable (%s: %s); skipping it for %g s", self.name, type(exc).__name__, exc, backoff)


def redis_client(url: str, timeout: float = REDIS_TIMEOUT_SECONDS) -> Any:
    """A Redis client whose every call gives up after `timeout` (connect, and each reply), with no retries."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        retry_on_timeout=False,
        health_check_interval=30,
    )


class Limiter:
    def admit(self, ticket: Ticket) -> Decision:
        raise NotImplementedError

    def release(self, ticket: Ticket, actual_tokens: int | None) -> None:
        """Free the concurrency slot; replace the token estimate by `actual_tokens` (None = keep it);
        drop the budget reservation and spend `actual_tokens` (None = the whole reservation)."""
        raise NotImplementedError


def _tokens_to_free(entries: list[tuple[float, int]], used: int, need: int, limit: int) -> float | None:
    """Timestamp of the entry whose expiry first lets `need` more tokens in, oldest first."""
    freed = 0
    for ts, tokens in entries:
        freed += tokens
        if used - freed + need <= limit:
            return ts
    return None


class _Subject:
    __slots__ = ("requests", "tokens", "leases", "spent", "reserved")

    def __init__(self) -> None:
        self.requests: deque[float] = deque()
        self.tokens: dict[str, tuple[float, int]] = {}
        """lease -> (admitted at, tokens), in admission order."""
        self.leases: set[str] = set()
        self.spent: int | None = None
        self.reserved: dict[str, tuple[float, int]] = {}
        """lease -> (admitted at, tokens held against the budget)."""


class MemoryLimiter(Limiter):
    """Counters in this process: exact within one worker, not across workers."""

    def __init__(self, clock=time.monotonic, lease_seconds: float = 900.0) -> None:
        self._clock = clock
        self.lease_ms = lease_seconds * 1000.0
        self._lock = threading.Lock()
        self._subjects: dict[str, _Subject] = {}

    def _subject(self, name: str) -> _Subject:
        s = self._subjects.get(name)
        if s is None:
            s = self._subjects[name] = _Subject()
        return s

    def admit(self, ticket: Ticket) -> Decision:
        limits = ticket.limits
        with self._lock:
            now = self._clock() * 1000.0
            s = self._subject(ticket.subject)
            horizon = now - WINDOW_MS
            while s.requests and s.requests[0] <= horizon:
                s.requests.popleft()
            for lease in [k for k, (ts, _) in s.tokens.items() if ts <= horizon]:
                del s.tokens[lease]
            free = 0  # read only with a budget
            if limits.budget:
                free = self._budget_free(s, ticket, limits.budget, now)
                if ticket.hold > free:
                    return Decision(False, "budget", remaining_budget=max(free, 0))
            used = sum(t for _, t in s.tokens.values())
            refused = _refusal(s, limits, ticket.estimate, used, now)
            if refused is not None:
                return refused
            return _grant(s, ticket, now, used, free)

    def _budget_free(self, s: _Subject, ticket: Ticket, budget: int, now: float) -> int:
        """Budget tokens neither spent nor reserved by a live lease (expired reservations dropped first)."""
        # Other workers' spending arrives through the key store (flushed usage): never go below it.
        s.spent = max(s.spent or 0, ticket.spent_at_lookup)
        for lease in [k for k, (ts, _) in s.reserved.items() if ts <= now - self.lease_ms]:
            del s.reserved[lease]
        return budget - s.spent - sum(t for _, t in s.reserved.values())

    def release(self, ticket: Ticket, actual_tokens: int | None) -> None:
        with self._lock:
            s = self._subjects.get(ticket.subject)
            if s is None:
                return
            s.leases.discard(ticket.lease)
            if ticket.limits.budget:
                s.reserved.pop(ticket.lease, None)
                s.spent = (s.spent or 0) + (ticket.hold if actual_tokens is None else actual_tokens)
            held = s.tokens.get(ticket.lease)
            if actual_tokens is not None and held is not None:
                s.tokens[ticket.lease] = (held[0], actual_tokens)


def _refusal(s: _Subject, limits: Limits, estimate: int, used: int, now: float) -> Decision | None:
    """The first of concurrency, requests per minute, tokens per minute that refuses the request, or None.
    `used`: tokens counted in the window so far. Reads only: nothing is taken until `_grant`."""
    if limits.concurrency and len(s.leases) >= limits.concurrency:
        return Decision(False, "concurrency", retry_after_ms=1000)
    if limits.rpm and len(s.requests) >= limits.rpm:
        retry = int(s.requests[0] + WINDOW_MS - now)
        return Decision(False, "requests", retry, remaining_requests=0, reset_requests_ms=retry)
    if limits.tpm:
        if estimate > limits.tpm:
            return Decision(False, "too_large")
        if used + estimate > limits.tpm:
            ts = _tokens_to_free(list(s.tokens.values()), used, estimate, limits.tpm)
            retry = int((ts if ts is not None else now) + WINDOW_MS - now)
            return Decision(False, "tokens", retry, remaining_tokens=max(limits.tpm - used, 0), reset_tokens_ms=retry)
    return None


def _grant(s: _Subject, ticket: Ticket, now: float, used: int, free: int) -> Decision:
    """Admit: count the request against each limit it has and say what remains (`free`: the budget's)."""
    limits = ticket.limits
    decision = Decision(True)
    if limits.budget:
        s.reserved[ticket.lease] = (now, ticket.hold)
        decision.remaining_budget = free - ticket.hold
    if limits.rpm:
        s.requests.append(now)
        decision.remaining_requests = limits.rpm - len(s.requests)
        decision.reset_requests_ms = int(s.requests[0] + WINDOW_MS - now)
    if limits.tpm:
        s.tokens[ticket.lease] = (now, ticket.estimate)
        decision.remaining_tokens = limits.tpm - used - ticket.estimate
        first = next(iter(s.tokens.values()))[0]
        decision.reset_tokens_ms = int(first + WINDOW_MS - now)
    if limits.concurrency:
        s.leases.add(ticket.lease)
    return decision


# KEYS: requests zset, tokens zset, concurrency zset, spent counter, budget reservations zset
# ARGV: rpm, tpm, concurrency, budget, estimate, lease, window ms, lease ms, spent from the key store,
#       tokens to reserve against the budget
# Returns: reason, retry ms, remaining requests, reset ms, remaining tokens, reset ms, remaining budget
ADMIT = """
local rpm, tpm, conc, budget = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local est, lease, window, lease_ms = tonumber(ARGV[5]), ARGV[6], tonumber(ARGV[7]), tonumber(ARGV[8])
local hold = tonumber(ARGV[10])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function amount(member) return tonumber(string.match(member, '|(%-?%d+)$')) end
local free = -1
if budget > 0 then
  local spent = tonumber(redis.call('GET', KEYS[4]) or '-1')
  local floor = tonumber(ARGV[9])
  if spent < floor then
    spent = floor
    redis.call('SET', KEYS[4], spent, 'EX', 86400)
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now - lease_ms)
  local reserved = 0
  for _, member in ipairs(redis.call('ZRANGE', KEYS[5], 0, -1)) do reserved = reserved + amount(member) end
  free = budget - spent - reserved
  if hold > free then return {'budget', 0, -1, 0, -1, 0, math.max(free, 0)} end
end
if conc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - lease_ms)
  if redis.call('ZCARD', KEYS[3]) >= conc then return {'concurrency', 1000, -1, 0, -1, 0, -1} end
end
local n, oldest = 0, now
if rpm > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
  n = redis.call('ZCARD', KEYS[1])
  if n > 0 then oldest = tonumber(redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2]) end
  if n >= rpm then
    local retry = oldest + window - now
    return {'requests', retry, 0, retry, -1, 0, -1}
  end
end
local used, first = 0, now
if tpm > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
  local entries = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
  for i = 1, #entries, 2 do used = used + amount(entries[i]) end
  if #entries > 0 then first = tonumber(entries[2]) end
  if est > tpm then return {'too_large', 0, -1, 0, -1, 0, -1} end
  if used + est > tpm then
    local freed, retry = 0, window
    for i = 1, #entries, 2 do
      freed = freed + amount(entries[i])
      if used - freed + est <= tpm then
        retry = tonumber(entries[i + 1]) + window - now
        break
      end
    end
    return {'tokens', retry, -1, 0, math.max(tpm - used, 0), retry, -1}
  end
end
local rem_req, rem_tok = -1, -1
if rpm > 0 then
  redis.call('ZADD', KEYS[1], now, lease)
  redis.call('PEXPIRE', KEYS[1], window)
  rem_req = rpm - n - 1
end
if tpm > 0 then
  redis.call('ZADD', KEYS[2], now, lease .. '|' .. est)
  redis.call('PEXPIRE', KEYS[2], window)
  rem_tok = tpm - used - est
end
if conc > 0 then
  redis.call('ZADD', KEYS[3], now, lease)
  redis.call('PEXPIRE', KEYS[3], lease_ms)
end
if budget > 0 then
  redis.call('ZADD', KEYS[5], now, lease .. '|' .. hold)
  redis.call('PEXPIRE', KEYS[5], lease_ms)
  free = free - hold
end
return {'ok', 0, rem_req, oldest + window - now, rem_tok, first + window - now, free}
"""

# KEYS: tokens zset, concurrency zset, spent counter, budget reservations zset
# ARGV: lease, estimate, actual tokens (-1 = unknown), count towards the budget (0/1), tokens reserved
RELEASE = """
redis.call('ZREM', KEYS[2], ARGV[1])
local actual = tonumber(ARGV[3])
if ARGV[4] == '1' then
  redis.call('ZREM', KEYS[4], ARGV[1] .. '|' .. ARGV[5])
  if redis.call('EXISTS', KEYS[3]) == 1 then
    redis.call('INCRBY', KEYS[3], actual < 0 and tonumber(ARGV[5]) or actual)
    redis.call('EXPIRE', KEYS[3], 86400)
  end
end
if actual < 0 then return 0 end
local old = ARGV[1] .. '|' .. ARGV[2]
local score = redis.call('ZSCORE', KEYS[1], old)
if score then
  redis.call('ZREM', KEYS[1], old)
  redis.call('ZADD', KEYS[1], score, ARGV[1] .. '|' .. actual)
end
return 1
"""


def _num(value: Any) -> int:
    return int(value.decode() if isinstance(value, bytes) else value)


class RedisLimiter(Limiter):
    """Counters in Redis, shared by every worker and replica; exact (atomic scripts)."""

    def __init__(
        self, url: str, prefix: str = "cot-proxy:", lease_seconds: float = 900.0, timeout: float = REDIS_TIMEOUT_SECONDS
    ) -> None:
        import redis

        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self.client = redis_client(url, timeout)
        self.circuit = Circuit("Redis (rate limits)")
        self.prefix = prefix
        self.lease_ms = int(lease_seconds * 1000)
        self._admit = self.client.register_script(ADMIT)
        self._release = self.client.register_script(RELEASE)
        self._pending: deque[tuple[list[str], list[Any]]] = deque(maxlen=MAX_PENDING_RELEASES)
        """Releases that could not be sent; applied before the next call that reaches Redis."""

    def _call(self, fn: Callable[[], T]) -> T:
        """`fn()` against Redis, unless the circuit is open; every failure becomes `LimiterUnavailable`."""
        if not self.circuit.allow():
            raise LimiterUnavailable(f"Redis skipped for {self.circuit.retry_in():.1f} s more after a failure")
        try:
            if self._pending:
                self._apply_pending()
            out = fn()
        except self._errors as exc:
            self.circuit.failed(exc)
            raise LimiterUnavailable(f"{type(exc).__name__}: {exc}") from exc
        self.circuit.succeeded()
        return out

    def _apply_pending(self) -> None:
        batch = []
        while self._pending:
            batch.append(self._pending.popleft())
        try:
            pipe = self.client.pipeline(transaction=False)
            for keys, args in batch:
                self._release(keys=keys, args=args, client=pipe)
            pipe.execute()
        except BaseException:
            self._pending.extendleft(reversed(batch))
            raise
        log.info("applied %d rate-limit release(s) missed while Redis was unreachable", len(batch))

    def _keys(self, subject: str) -> tuple[str, str, str, str, str]:
        base = f"{self.prefix}limits:{{{subject}}}:"
        return base + "requests", base + "tokens", base + "concurrent", base + "spent", base + "reserved"

    def admit(self, ticket: Ticket) -> Decision:
        lim = ticket.limits
        args = [
            lim.rpm or 0,
            lim.tpm or 0,
            lim.concurrency or 0,
            lim.budget or 0,
            ticket.estimate,
            ticket.lease,
            WINDOW_MS,
            self.lease_ms,
            ticket.spent_at_lookup,
            ticket.hold,
        ]
        out = self._call(lambda: self._admit(keys=list(self._keys(ticket.subject)), args=args))
        reason = out[0].decode() if isinstance(out[0], bytes) else out[0]
        retry, rem_req, reset_req, rem_tok, reset_tok, rem_budget = (_num(v) for v in out[1:7])
        return Decision(
            allowed=reason == "ok",
            reason=None if reason == "ok" else reason,
            retry_after_ms=retry,
            remaining_budget=None if rem_budget < 0 else rem_budget,
            remaining_requests=None if rem_req < 0 else rem_req,
            reset_requests_ms=reset_req,
            remaining_tokens=None if rem_tok < 0 else rem_tok,
            reset_tokens_ms=reset_tok,
        )

    def release(self, ticket: Ticket, actual_tokens: int | None) -> None:
        req, tok, conc, spent, reserved = self._keys(ticket.subject)
        args = [
            ticket.lease,
            ticket.estimate,
            -1 if actual_tokens is None else actual_tokens,
            1 if ticket.limits.budget else 0,
            ticket.hold,
        ]
        keys = [tok, conc, spent, reserved]
        try:
            self._call(lambda: self._release(keys=keys, args=args))
        except LimiterUnavailable:
            self._pending.append((keys, args))
            raise


def retry_after_seconds(ms: int) -> str:
    """Retry-After in whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(ms / 1000)))


def reset_duration(ms: int) -> str:
    """OpenAI's reset format: `20ms`, `1.5s`, `6m0s`."""
    ms = max(int(ms), 0)
    if ms < 1000:
        return f"{ms}ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{round(seconds, 3):g}s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{round(rest, 3):g}s"

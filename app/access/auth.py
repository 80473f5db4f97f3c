"""Who is calling: `Authorization: Bearer <credential>` (or `x-api-key: <credential>`) -> an `Identity`, or 401.

Order: a fixed `GATEWAY_BEARER_TOKEN` (constant-time comparison against
every configured token), then a virtual key (`sk-cp-…`, looked up by its
hash), then a JWT (three dot-separated parts). Anything else is 401
`invalid_api_key`. Secrets never reach a log: at most their last 4 characters.

Key lookups are cached per worker for KEY_CACHE_SECONDS (0.5 s), so a key
revoked or expired in the store is refused within that on every worker and
replica, while a busy key costs the database at most two reads a second.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import AuthenticationError, Overloaded
from ..redact import hint
from .keys import KEY_PREFIX, KeyRecord, now_utc
from .limits import Limits
from .settings import KEY_CACHE_SECONDS, AccessSettings

if TYPE_CHECKING:
    from .store import KeyStore

log = logging.getLogger("cot_proxy.guard")

MAX_CACHE = 10_000


@dataclass(frozen=True)
class Identity:
    kind: str
    """`anonymous`, `token`, `key` or `jwt`."""
    name: str
    """For records and logs: the key's name, the JWT's `sub`, or `token…abcd`."""
    subject: str
    """The limiter's key: stable, unique, and not secret."""
    key_id: int | None = None
    models: tuple[str, ...] | None = None
    """Allowed model globs; None = any."""
    limits: Limits = field(default_factory=Limits)
    spent_tokens: int = 0


ANONYMOUS = Identity("anonymous", "anonymous", "anonymous")


def bearer(headers: Mapping[str, str]) -> str | None:
    value = headers.get("authorization", "")
    scheme, _, credential = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not credential.strip():
        return None
    return credential.strip()


def credential_of(headers: Mapping[str, str]) -> str | None:
    """`Authorization: Bearer <key>`, else Anthropic's `x-api-key: <key>` (what its SDKs and Claude
    Code send). With both, the Bearer one counts."""
    return bearer(headers) or headers.get("x-api-key", "").strip() or None


def _claim_int(claims: Mapping[str, Any], name: str) -> int | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).isdigit():
        raise AuthenticationError(f"The token's '{name}' claim must be a non-negative integer.")
    return int(value)


def _claim_models(claims: Mapping[str, Any]) -> tuple[str, ...] | None:
    value = claims.get("models")
    if value is None:
        return None
    if isinstance(value, str):
        return tuple(m.strip() for m in value.split(",") if m.strip())
    if isinstance(value, list) and all(isinstance(m, str) for m in value):
        return tuple(value)
    raise AuthenticationError("The token's 'models' claim must be a list of model names or globs.")


class KeyCache:
    """secret hash -> (record or None, fetched at), trusted for `ttl` seconds."""

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[KeyRecord | None, float]] = {}

    def get(self, digest: str) -> tuple[bool, KeyRecord | None]:
        entry = self._entries.get(digest)
        if entry is None or self._clock() - entry[1] >= self.ttl:
            return False, None
        return True, entry[0]

    def put(self, digest: str, record: KeyRecord | None) -> None:
        with self._lock:
            if len(self._entries) >= MAX_CACHE:
                now = self._clock()
                self._entries = {k: v for k, v in self._entries.items() if now - v[1] < self.ttl}
                if len(self._entries) >= MAX_CACHE:
                    self._entries.clear()
            self._entries[digest] = (record, self._clock())


class Authenticator:
    def __init__(self, settings: AccessSettings, store: Callable[[], KeyStore] | None = None) -> None:
        self.settings = settings
        for warning in settings.warnings:  # once per worker, as it starts
            log.warning("%s", warning)
        self._tokens = [t.encode() for t in settings.bearer_tokens]
        self._store = store
        self.cache = KeyCache(KEY_CACHE_SECONDS)
        self._jwt_keys: dict[str, Any] = {}
        if settings.jwt_enabled:
            import jwt

            self._jwt = jwt
            for alg in settings.jwt_algorithms:
                self._jwt_keys[alg] = settings.jwt_secret if alg.startswith("HS") else settings.jwt_public_key

    @property
    def enabled(self) -> bool:
        return self.settings.auth_enabled

    def authenticate(self, headers: Mapping[str, str]) -> Identity:
        if not self.enabled:
            return ANONYMOUS
        credential = credential_of(headers)
        if credential is None:
            raise AuthenticationError(
                "Missing API key: send 'Authorization: Bearer <key>' (or 'x-api-key: <key>').",
                headers={"WWW-Authenticate": "Bearer"},
            )
        identity = self._static(credential)
        if identity is None and self.settings.virtual_keys and credential.startswith(KEY_PREFIX):
            identity = self._virtual_key(credential)
        if identity is None and self._jwt_keys and credential.count(".") == 2:
            identity = self._jwt_identity(credential)
        if identity is None:
            log.info("refused an unknown API key %s", hint(credential))
            raise AuthenticationError(
                f"Incorrect API key provided: {hint(credential)}.", headers={"WWW-Authenticate": "Bearer"}
            )
        return identity

    def _static(self, credential: str) -> Identity | None:
        given = credential.encode()
        match: bytes | None = None
        for token in self._tokens:  # compare with every token: the time taken says nothing about which matched
            if hmac.compare_digest(given, token):
                match = token
        if match is None:
            return None
        digest = hashlib.sha256(match).hexdigest()[:16]
        return Identity("token", "token" + hint(credential), "token:" + digest)

    def _virtual_key(self, credential: str) -> Identity | None:
        digest = hashlib.sha256(credential.encode()).hexdigest()
        hit, record = self.cache.get(digest)
        if not hit:
            assert self._store is not None
            from sqlalchemy.exc import SQLAlchemyError  # loaded only with virtual keys on

            try:
                record = self._store().lookup(credential)
            except SQLAlchemyError as exc:
                log.error("key store unreachable: %s", type(exc).__name__)
                raise Overloaded(
                    "The key store is unreachable; retry shortly.",
                    code="key_store_unavailable",
                    headers={"Retry-After": "1"},
                ) from None
            self.cache.put(digest, record)
        if record is None:
            return None
        status = record.status(now_utc())
        if status != "active":
            log.info("refused %s key %s (%s)", status, hint(credential), record.name)
            raise AuthenticationError(
                f"The API key {hint(credential)} is {status}.", headers={"WWW-Authenticate": "Bearer"}
            )
        return Identity(
            "key",
            record.name,
            f"key:{record.id}",
            key_id=record.id,
            models=record.models,
            limits=record.limits,
            spent_tokens=record.spent_tokens,
        )

    def _jwt_identity(self, credential: str) -> Identity:
        jwt = self._jwt
        try:
            alg = jwt.get_unverified_header(credential).get("alg")
            key = self._jwt_keys.get(alg)
            if key is None:
                raise AuthenticationError(f"The token's algorithm {alg!r} is not accepted.")
            claims = jwt.decode(
                credential,
                key,
                algorithms=[alg],
                audience=self.settings.jwt_audience,
                issuer=self.settings.jwt_issuer,
                options={"require": ["sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthenticationError("The token has expired.", headers={"WWW-Authenticate": "Bearer"}) from None
        except jwt.PyJWTError as exc:
            log.info("refused a JWT %s: %s", hint(credential), type(exc).__name__)
            raise AuthenticationError(f"Invalid token: {exc}.", headers={"WWW-Authenticate": "Bearer"}) from None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise AuthenticationError("The token's 'sub' claim must name the caller.")
        limits = Limits(
            rpm=_claim_int(claims, "rpm"),
            tpm=_claim_int(claims, "tpm"),
            concurrency=_claim_int(claims, "max_concurrent"),
        )
        subject = "jwt:" + hashlib.sha256(sub.encode()).hexdigest()[:16]
        return Identity("jwt", sub, subject, models=_claim_models(claims), limits=limits)

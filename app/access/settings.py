"""Access settings from the environment: authentication, limits, usage accounting, strict checks.

Standard library only: `app/config.py` imports this module, and the Gunicorn
master loads that to validate the environment before forking. A bad value
raises `AccessConfigError` whose message names the variable.
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from ..clientip import Networks, networks_from_env
from ..envparse import ConfigError, boolean, integer, number, text

DEFAULT_DATABASE_URL = "sqlite:///data/cot-proxy.db"
JWT_ALGORITHMS = frozenset(
    {
        "HS256",
        "HS384",
        "HS512",
        "RS256",
        "RS384",
        "RS512",
        "PS256",
        "PS384",
        "PS512",
        "ES256",
        "ES384",
        "ES512",
        "EdDSA",
    }
)
KEY_CACHE_SECONDS = 0.5
"""How long a worker trusts a key it looked up: revocation and expiry show within this (well under 1 s)."""
WEAK_TOKEN_CHARS = 16
"""A fixed token shorter than this starts the proxy with a warning (logged by each worker at start)."""


class AccessConfigError(ConfigError):
    """An access variable is malformed; the message names it."""


def _check_token(name: str, token: str, where: str, warnings: list[str], *, listed: bool = True) -> None:
    """Refuse what cannot be meant (empty, whitespace inside); warn about what is merely weak.

    Never puts the token itself in a message."""
    if not token:
        raise AccessConfigError(f"{name}: {where} is empty (a stray comma?)")
    if any(c.isspace() for c in token):
        raise AccessConfigError(
            f"{name}: {where} has whitespace inside; "
            + ("separate several tokens with commas, and " if listed else "")
            + "leave out any 'Bearer ' prefix"
        )
    if len(token) < WEAK_TOKEN_CHARS:
        warnings.append(
            f"WEAK CREDENTIAL: {name} ({where}) has only {len(token)} characters: anyone who guesses "
            f"it gets in. Use at least {WEAK_TOKEN_CHARS} random characters, e.g. `openssl rand -hex 32`."
        )


def _tokens(env: Mapping[str, str], name: str, warnings: list[str]) -> tuple[str, ...]:
    raw = text(env, name)
    if raw is None:
        return ()
    tokens = tuple(t.strip() for t in raw.split(","))
    for i, t in enumerate(tokens, 1):
        _check_token(name, t, f"token {i} of {len(tokens)}" if len(tokens) > 1 else "the token", warnings)
    return tokens


def _admin_token(env: Mapping[str, str], warnings: list[str]) -> str | None:
    raw = text(env, "ADMIN_TOKEN")
    if raw is not None:
        _check_token("ADMIN_TOKEN", raw, "the token", warnings, listed=False)
    return raw


def _user_db_path(env: Mapping[str, str]) -> str | None:
    """`USER_DB_PATH` (the Nexus gateway's name): the key store's SQLite file, as a DATABASE_URL."""
    raw = text(env, "USER_DB_PATH")
    if raw is None:
        return None
    if any(c in raw for c in "?#") or any(unicodedata.category(c) == "Cc" for c in raw):
        raise AccessConfigError(
            f"USER_DB_PATH={raw!r}: a file path without '?', '#' or control characters "
            "(or give DATABASE_URL=sqlite:///...)"
        )
    path = os.path.expanduser(raw)
    if path == ":memory:":
        return "sqlite://"
    # An absolute path gives sqlite:////data/users.sqlite, as SQLAlchemy wants; it reads %XX as an escape.
    return "sqlite:///" + path.replace("%", "%25")


def _database_url(env: Mapping[str, str]) -> str:
    raw = text(env, "DATABASE_URL") or _user_db_path(env) or DEFAULT_DATABASE_URL
    scheme = raw.split("://", 1)[0] if "://" in raw else ""
    dialect = scheme.split("+", 1)[0]
    if dialect not in ("sqlite", "postgresql", "postgres"):
        raise AccessConfigError(f"DATABASE_URL={_redacted(raw)!r}: use sqlite:///path or postgresql://…")
    return raw


def _redis_url(env: Mapping[str, str]) -> str | None:
    raw = text(env, "REDIS_URL")
    if raw is None:
        return None
    parts = urlsplit(raw)
    if parts.scheme not in ("redis", "rediss", "unix") or (parts.scheme != "unix" and not parts.hostname):
        raise AccessConfigError(f"REDIS_URL={_redacted(raw)!r}: use redis://host:port/db, rediss://… or unix://…")
    return raw


def _redis_timeout(env: Mapping[str, str]) -> float:
    value = number(env, "REDIS_TIMEOUT_SECONDS", 0.25, positive=True)
    if value > 10:
        raise AccessConfigError(
            f"REDIS_TIMEOUT_SECONDS={value:g}: at most 10 (every request may wait this long once when Redis hangs)"
        )
    return value


def _redacted(url: str) -> str:
    """The URL without its password, for error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(":" + parts.password + "@", ":***@", 1)


def _public_key(env: Mapping[str, str]) -> str | None:
    raw = text(env, "JWT_PUBLIC_KEY")
    if raw is None:
        return None
    if "-----BEGIN" in raw:
        return raw.replace("\\n", "\n")  # a PEM squeezed onto one line in an env file
    try:
        pem = Path(raw).read_text()
    except OSError as exc:
        raise AccessConfigError(
            f"JWT_PUBLIC_KEY={raw!r}: neither a PEM key nor a readable file ({exc.strerror})"
        ) from None
    if "-----BEGIN" not in pem:
        raise AccessConfigError(f"JWT_PUBLIC_KEY={raw!r}: the file holds no PEM key")
    return pem


def _algorithms(env: Mapping[str, str], secret: str | None, public_key: str | None) -> tuple[str, ...]:
    raw = text(env, "JWT_ALGORITHMS")
    if raw is None:
        algorithms: list[str] = []
        if secret:
            algorithms.append("HS256")
        if public_key:
            algorithms += ["RS256", "ES256"]
        return tuple(algorithms)
    names = tuple(a.strip() for a in raw.split(",") if a.strip())
    for a in names:
        if a not in JWT_ALGORITHMS:
            raise AccessConfigError(f"JWT_ALGORITHMS: {a!r} is not one of {', '.join(sorted(JWT_ALGORITHMS))}")
        if a.startswith("HS") and not secret:
            raise AccessConfigError(f"JWT_ALGORITHMS: {a} needs JWT_SECRET")
        if not a.startswith("HS") and not public_key:
            raise AccessConfigError(f"JWT_ALGORITHMS: {a} needs JWT_PUBLIC_KEY")
    return names


@dataclass(frozen=True)
class AccessSettings:
    """Who may call the proxy, how much, and what is recorded. Build with `from_env()`."""

    bearer_tokens: tuple[str, ...] = field(default=(), repr=False)
    """`GATEWAY_BEARER_TOKEN`: fixed tokens accepted as `Authorization: Bearer …`."""
    virtual_keys: bool = False
    """`VIRTUAL_KEYS`: accept `sk-cp-…` keys from the key store."""
    database_url: str = field(default=DEFAULT_DATABASE_URL, repr=False)
    """`DATABASE_URL`, else `sqlite:///<USER_DB_PATH>`, else `sqlite:///data/cot-proxy.db`."""
    jwt_secret: str | None = field(default=None, repr=False)
    jwt_public_key: str | None = field(default=None, repr=False)
    jwt_algorithms: tuple[str, ...] = ()
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    admin_token: str | None = field(default=None, repr=False)
    """`ADMIN_TOKEN`: guards `GET /v1/usage`; unset = that endpoint is off."""
    redis_url: str | None = field(default=None, repr=False)
    """`REDIS_URL`: shared limit counters; None = in memory, per worker."""
    redis_prefix: str = "cot-proxy:"
    redis_timeout: float = 0.25
    """`REDIS_TIMEOUT_SECONDS`: bound on connecting to Redis and on each reply (rate limits, shared ejections)."""
    fail_closed: bool = False
    """`RATE_LIMIT_FAIL_CLOSED`: refuse (503) rather than serve unlimited while Redis is unreachable."""
    max_concurrent_requests: int = 0
    """Per worker; 0 = no cap."""
    max_queued_requests: int = 0
    """Requests allowed to wait for a slot, per worker (default: as many as MAX_CONCURRENT_REQUESTS)."""
    queue_timeout: float = 10.0
    usage_accounting: bool = False
    """Write a usage record per request to the key store (default: on with VIRTUAL_KEYS)."""
    usage_flush_seconds: float = 1.0
    strict_validation: bool = True
    max_tokens_cap: int = 1_048_576
    max_n: int = 128
    trusted_proxies: Networks | None = None
    """`TRUSTED_PROXIES`: peers whose `X-Forwarded-For` names the client; None = the peer is the client."""
    admin_allowed_ips: Networks | None = None
    """`ADMIN_ALLOWED_IPS`: who may call `GET /v1/usage` (and any admin endpoint); None = anyone."""
    warnings: tuple[str, ...] = field(default=(), compare=False)
    """Weak but accepted settings (short tokens); the access guard logs each once when the app starts."""

    @property
    def jwt_enabled(self) -> bool:
        return bool(self.jwt_algorithms)

    @property
    def auth_enabled(self) -> bool:
        return bool(self.bearer_tokens) or self.virtual_keys or self.jwt_enabled

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> AccessSettings:
        secret = text(env, "JWT_SECRET")
        if secret is not None and len(secret.encode()) < 32:
            raise AccessConfigError("JWT_SECRET: use at least 32 bytes (RFC 7518 for HS256)")
        public_key = _public_key(env)
        virtual_keys = boolean(env, "VIRTUAL_KEYS", False)
        max_concurrent = integer(env, "MAX_CONCURRENT_REQUESTS", 0)
        warnings: list[str] = []
        bearer_tokens = _tokens(env, "GATEWAY_BEARER_TOKEN", warnings)
        admin = _admin_token(env, warnings)
        return cls(
            bearer_tokens=bearer_tokens,
            virtual_keys=virtual_keys,
            database_url=_database_url(env),
            jwt_secret=secret,
            jwt_public_key=public_key,
            jwt_algorithms=_algorithms(env, secret, public_key),
            jwt_audience=text(env, "JWT_AUDIENCE"),
            jwt_issuer=text(env, "JWT_ISSUER"),
            admin_token=admin,
            redis_url=_redis_url(env),
            redis_prefix=text(env, "REDIS_PREFIX") or "cot-proxy:",
            redis_timeout=_redis_timeout(env),
            fail_closed=boolean(env, "RATE_LIMIT_FAIL_CLOSED", False),
            max_concurrent_requests=max_concurrent,
            max_queued_requests=integer(env, "MAX_QUEUED_REQUESTS", max_concurrent),
            queue_timeout=number(env, "QUEUE_TIMEOUT_SECONDS", 10.0),
            usage_accounting=boolean(env, "USAGE_ACCOUNTING", virtual_keys),
            usage_flush_seconds=number(env, "USAGE_FLUSH_SECONDS", 1.0),
            strict_validation=boolean(env, "STRICT_VALIDATION", True),
            max_tokens_cap=integer(env, "MAX_TOKENS_CAP", 1_048_576, low=1),
            max_n=integer(env, "MAX_N", 128, low=1),
            trusted_proxies=networks_from_env(env, "TRUSTED_PROXIES"),
            admin_allowed_ips=networks_from_env(env, "ADMIN_ALLOWED_IPS"),
            warnings=tuple(warnings),
        )

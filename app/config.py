"""Configuration, read once at start from the environment (and `.env`).

`Config.from_env()` is the only place that reads variables; everything else
receives the typed object. Keep this module standard-library only (plus the
lazy `dotenv` import): gunicorn.conf.py loads it in the master to validate. A bad value raises `ConfigError` with one line
naming the variable, so start-up stops with a message a person can act on.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit


class ConfigError(ValueError):
    """A configuration value is malformed; the message names the variable."""


def _get(env: Mapping[str, str], *names: str) -> str | None:
    """First non-empty value among `names`: an empty variable counts as unset."""
    for name in names:
        value = env.get(name)
        if value is not None and value.strip() != "":
            return value.strip()
    return None


def _number(env: Mapping[str, str], names: tuple[str, ...], default: float, *, integer: bool = False) -> float:
    raw = _get(env, *names)
    if raw is None:
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{names[0]}={raw!r}: not {kind}") from None
    if value < 0:
        raise ConfigError(f"{names[0]}={raw!r}: must not be negative")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = _get(env, name)
    if raw is None:
        return default
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r}: not a boolean (use true or false)")


def _url(env: Mapping[str, str], name: str) -> str | None:
    raw = _get(env, name)
    if raw is None:
        return None
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{name}={raw!r}: not an http(s) URL")
    return raw


@dataclass(frozen=True)
class Config:
    """Everything the app needs to know, typed. Build with `from_env()`."""

    target_base_url: str | None = None
    """Upstream base including its API prefix, always ending in `/`; None = echo mode."""
    upstream_api_key: str | None = field(default=None, repr=False)
    debug: bool = False
    host: str = "0.0.0.0"
    port: int = 5000
    connect_timeout: float = 10.0
    read_timeout: float = 600.0
    max_request_bytes: int = 32 * 1024 * 1024
    health_cache_seconds: float = 2.0
    extra: dict[str, str] = field(default_factory=dict, repr=False)
    """The raw environment, for subsystems that read their own variables once at init."""

    @property
    def echo_mode(self) -> bool:
        return self.target_base_url is None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        """Read the environment (loading `.env` first when reading the real one)."""
        if env is None:
            from dotenv import load_dotenv

            load_dotenv(override=False)
            env = os.environ
        target = _url(env, "TARGET_BASE_URL")
        backend = _url(env, "BACKEND_URL")
        if target is not None:
            base = target.rstrip("/") + "/"
        elif backend is not None:
            base = backend.rstrip("/") + "/v1/"
        else:
            base = None
        return cls(
            target_base_url=base,
            upstream_api_key=_get(env, "UPSTREAM_API_KEY"),
            debug=_bool(env, "DEBUG", False),
            host=_get(env, "HOST") or "0.0.0.0",
            port=int(_number(env, ("PORT",), 5000, integer=True)),
            connect_timeout=_number(env, ("CONNECT_TIMEOUT_SECONDS",), 10.0),
            read_timeout=_number(env, ("REQUEST_TIMEOUT_SECONDS", "API_REQUEST_TIMEOUT"), 600.0),
            max_request_bytes=int(_number(env, ("MAX_REQUEST_BYTES",), 32 * 1024 * 1024, integer=True)),
            extra=dict(env),
        )

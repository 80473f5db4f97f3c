"""Reading typed values from the environment, once, with errors that name the variable.

Every settings module uses these, so every variable behaves alike: an empty
value counts as unset, surrounding spaces are ignored, and a malformed value
raises `ConfigError` with one line naming the variable (and, for URLs that may
carry credentials, not echoing the value). Standard library only.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off")


class ConfigError(ValueError):
    """A configuration value is malformed; the message names the variable."""


def text(env: Mapping[str, str], *names: str) -> str | None:
    """First non-empty value among `names` (aliases, preferred first)."""
    found = _first(env, names)
    return None if found is None else found[1]


def _first(env: Mapping[str, str], names: tuple[str, ...]) -> tuple[str, str] | None:
    """(the variable that is set, its value), so errors name what the user wrote."""
    for name in names:
        value = env.get(name)
        if value is not None and value.strip():
            return name, value.strip()
    return None


def integer(
    env: Mapping[str, str],
    name: str,
    default: int | None,
    *,
    low: int = 0,
    high: int | None = None,
    aliases: tuple[str, ...] = (),
) -> int | None:
    found = _first(env, (name, *aliases))
    if found is None:
        return default
    name, raw = found
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: not an integer") from None
    if value < low or (high is not None and value > high):
        span = f"{low}..{high}" if high is not None else f"at least {low}"
        raise ConfigError(f"{name}={raw!r}: must be {span}")
    return value


def number(
    env: Mapping[str, str], name: str, default: float, *, positive: bool = False, aliases: tuple[str, ...] = ()
) -> float:
    found = _first(env, (name, *aliases))
    if found is None:
        return default
    name, raw = found
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: not a number") from None
    if value < 0 or (positive and value == 0) or value != value:
        raise ConfigError(f"{name}={raw!r}: must be {'positive' if positive else 'zero or more'}")
    return value


def boolean(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = text(env, name)
    if raw is None:
        return default
    if raw.lower() in TRUE:
        return True
    if raw.lower() in FALSE:
        return False
    raise ConfigError(f"{name}={raw!r}: not a boolean (use true or false)")


def choice(env: Mapping[str, str], name: str, choices: tuple[str, ...], default: str | None) -> str | None:
    raw = text(env, name)
    if raw is None:
        return default
    if raw.lower() not in choices:
        raise ConfigError(f"{name}={raw!r}: use one of {', '.join(choices)}")
    return raw.lower()


def url(
    env: Mapping[str, str], name: str, *, schemes: tuple[str, ...] = ("http", "https"), secret: bool = False
) -> str | None:
    """An absolute URL; `secret=True` keeps the value out of the message (it may hold a password)."""
    raw = text(env, name)
    if raw is None:
        return None
    parts = urlsplit(raw)
    if parts.scheme not in schemes or not (parts.netloc or parts.scheme == "unix"):
        shown = name if secret else f"{name}={raw!r}"
        raise ConfigError(f"{shown}: not a {'/'.join(schemes)} URL")
    return raw


def items(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    """A comma-separated list, blanks dropped."""
    raw = text(env, name) or ""
    return tuple(part.strip() for part in raw.split(",") if part.strip())

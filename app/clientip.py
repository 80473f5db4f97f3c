"""Who is calling: the client's address, and IP allow-lists for sensitive endpoints.

    TRUSTED_PROXIES=10.0.0.0/8,::1   peers whose `X-Forwarded-For` is believed (default: none)
    METRICS_ALLOWED_IPS=...          who may read GET /metrics (default: anyone)
    ADMIN_ALLOWED_IPS=...            who may call GET /v1/usage, and any admin endpoint (default: anyone)

Each list is comma-separated CIDRs or single addresses, IPv4 or IPv6
(`10.0.0.0/8, 192.168.1.7, ::1`). A malformed entry, or one with host bits set
(`10.0.0.1/8`), stops start-up naming the variable: nothing ever fails open.

The client is the connection's peer address, always, unless the peer is one of
`TRUSTED_PROXIES`: then `X-Forwarded-For` is read from the right, skipping
trusted proxies, and the first address that is not one is the client (what a
client writes at the left of the header can never make it someone else). An
entry there that is not an address makes the client unknown, which no
allow-list admits. IPv4-mapped IPv6 peers (`::ffff:10.0.0.1`, a dual-stack
listener) count as their IPv4 address.

A refused request gets 403 `ip_not_allowed` in the OpenAI error envelope, before
any credential is looked at. Use `allow_only(getter)` on a view, or
`guard_blueprint(bp, getter)` for every endpoint of a blueprint (a console, a
keys API); `getter(config)` returns the allow-list (None: open).

Parsing is standard library only (the settings modules import it, and the
Gunicorn master loads those before gevent patches anything); Flask is imported
only by the request-time helpers.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from .envparse import ConfigError, text

if TYPE_CHECKING:
    from flask import Blueprint

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
F = TypeVar("F", bound=Callable[..., Any])
MAX_FORWARDED_HOPS = 32
"""At most this many `X-Forwarded-For` entries are looked at; a longer chain makes the client unknown."""


class AllowListConfigError(ConfigError):
    """A malformed address list; the message names the variable."""


@dataclass(frozen=True)
class Networks:
    """A parsed address list and the variable it came from (for messages)."""

    variable: str
    networks: tuple[Network, ...]

    def __contains__(self, address: object) -> bool:
        if not isinstance(address, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
            return False
        return any(address.version == n.version and address in n for n in self.networks)

    def __str__(self) -> str:
        return ",".join(str(n) for n in self.networks)


def parse_networks(raw: str, variable: str) -> Networks:
    """`raw` (comma-separated CIDRs or addresses) as Networks; AllowListConfigError naming `variable`."""
    entries = [part.strip() for part in raw.split(",")]
    if not any(entries):
        raise AllowListConfigError(f"{variable}={raw!r}: no address in it")
    networks: list[Network] = []
    for i, entry in enumerate(entries, 1):
        where = f"{variable}: entry {i} {entry!r}" if len(entries) > 1 else f"{variable}={entry!r}"
        if not entry:
            raise AllowListConfigError(f"{variable}: entry {i} is empty (a stray comma?)")
        try:
            networks.append(ipaddress.ip_network(entry, strict=True))
        except ValueError as exc:
            if "host bits set" in str(exc):
                fixed = ipaddress.ip_network(entry, strict=False)
                raise AllowListConfigError(f"{where}: has host bits set (did you mean {fixed}?)") from None
            raise AllowListConfigError(
                f"{where}: not an IP address or CIDR (e.g. 10.0.0.0/8, 192.168.1.7, ::1)"
            ) from None
    return Networks(variable, tuple(networks))


def networks_from_env(env: Mapping[str, str], name: str) -> Networks | None:
    """The list in variable `name`; None when it is unset or empty (no restriction)."""
    raw = text(env, name)
    return None if raw is None else parse_networks(raw, name)


def address(value: str | None) -> Address | None:
    """`value` as an address (IPv4-mapped IPv6 as IPv4, brackets and an IPv6 zone dropped); None if it is none."""
    if not value:
        return None
    value = value.strip()
    if value.startswith("[") and "]" in value:  # "[::1]" or "[::1]:port" as some proxies write it
        value = value[1 : value.index("]")]
    value = value.split("%", 1)[0]
    try:
        found = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(found, ipaddress.IPv6Address) and found.ipv4_mapped is not None:
        return found.ipv4_mapped
    return found


def client_address(peer: str | None, forwarded_for: Iterable[str], trusted: Networks | None) -> Address | None:
    """The client's address: the peer, or from `X-Forwarded-For` (its header values, in order)
    when the peer is a trusted proxy; None when unknown."""
    current = address(peer)
    if trusted is None or current not in trusted:
        return current
    hops = [hop.strip() for value in forwarded_for for hop in value.split(",")]
    if len(hops) > MAX_FORWARDED_HOPS:
        return None
    for hop in reversed(hops):
        if not hop:
            continue
        current = address(hop)
        if current is None or current not in trusted:
            return current  # the first untrusted hop (None: garbage, an unknown client)
    return current  # every hop a trusted proxy: the leftmost one


def request_client(request: Any, trusted: Networks | None) -> Address | None:
    """`client_address` for a Flask/Werkzeug request."""
    forwarded = request.headers.getlist("X-Forwarded-For") if trusted is not None else ()
    return client_address(request.remote_addr, forwarded, trusted)


def client_text(request: Any, trusted: Networks | None) -> str | None:
    """The client's address as text for logs: the resolved one, else what the server saw."""
    found = request_client(request, trusted)
    return str(found) if found is not None else request.remote_addr


# -- request time (Flask) -----------------------------------------------------------


Getter = Callable[[Any], "Networks | None"]
"""config -> the allow-list that applies (None: open)."""


def check(getter: Getter) -> None:
    """Raise 403 `ip_not_allowed` unless this request's client is in the allow-list `getter` gives."""
    from flask import current_app, request

    from .errors import PermissionDenied

    config = current_app.config["COT"]
    allowed = getter(config)
    if allowed is None:
        return
    client = request_client(request, config.access.trusted_proxies)
    if client in allowed:
        return
    shown = str(client) if client is not None else "an unknown address"
    raise PermissionDenied(
        f"{request.method} {request.path} is not served to {shown} (only to {allowed.variable}).", code="ip_not_allowed"
    )


def allow_only(getter: Getter) -> Callable[[F], F]:
    """View decorator: answer only clients in the allow-list `getter(config)` gives."""

    def wrap(view: F) -> F:
        @functools.wraps(view)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            check(getter)
            return view(*args, **kwargs)

        return guarded  # type: ignore[return-value]

    return wrap


def guard_blueprint(bp: Blueprint, getter: Getter) -> None:
    """Every endpoint of `bp` answers only clients in the allow-list (checked before its views,
    after the app's own before-request steps such as the request id)."""
    bp.before_request(lambda: check(getter))

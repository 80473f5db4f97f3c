"""Where the proxy listens: the one rule, used by gunicorn.conf.py (`bind`), by
`Config.from_env` (`host`, `port`: Flask's dev server) and by the Docker HEALTHCHECK.

Host and port are chosen independently, each from the first variable that is set
(an empty value counts as unset, surrounding spaces are ignored):

    host: HOST, else GATEWAY_HOST, else PROXY_ADDR's host, else 0.0.0.0
    port: PORT, else GATEWAY_PORT, else PROXY_ADDR's port, else 5000

`PROXY_ADDR` (the Livepeer gateway proxy's name) is `:8090`, `host:8090` or
`[::1]:8090`; it is checked whenever it is set, even if HOST and PORT override it.
So `HOST=127.0.0.1 PROXY_ADDR=:8090` listens on 127.0.0.1:8090.

Standard library only and no relative imports: gunicorn.conf.py loads it in the
master before gevent patches anything, and the Docker HEALTHCHECK runs this file
as a script (`python -P app/listen.py`), which probes `/healthz` on the address
the rule gives and exits 0 if it answers 200, else 1.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

DEFAULT_HOST = "0.0.0.0"
DEFAULT_PORT = 5000
HOST_VARS = ("HOST", "GATEWAY_HOST")
PORT_VARS = ("PORT", "GATEWAY_PORT")


class ListenAddressError(ValueError):
    """A listen variable is malformed; the message (one line) names it."""


def _first(env: Mapping[str, str], names: tuple[str, ...]) -> tuple[str, str] | None:
    for name in names:
        value = env.get(name)
        if value is not None and value.strip():
            return name, value.strip()
    return None


def _port(name: str, raw: str) -> int:
    try:
        port = int(raw)
    except ValueError:
        raise ListenAddressError(f"{name}={raw!r}: not an integer") from None
    if not 1 <= port <= 65535:
        raise ListenAddressError(f"{name}={raw!r}: must be 1..65535")
    return port


def _host(raw: str) -> str:
    """A host without IPv6 brackets: `[::1]` -> `::1`."""
    return raw[1:-1] if raw.startswith("[") and raw.endswith("]") else raw


def proxy_addr(env: Mapping[str, str]) -> tuple[str | None, int] | None:
    """`PROXY_ADDR` as (host or None, port); None when unset."""
    found = _first(env, ("PROXY_ADDR",))
    if found is None:
        return None
    raw = found[1]
    host, sep, port = raw.rpartition(":")
    bad = f"PROXY_ADDR={raw!r}: expected ':PORT', 'HOST:PORT' or '[IPv6]:PORT'"
    if not sep or not port:
        raise ListenAddressError(bad)
    if host.startswith("["):
        if not host.endswith("]") or len(host) < 3:
            raise ListenAddressError(bad)
    elif ":" in host or "]" in host:
        raise ListenAddressError(bad + " (an IPv6 host goes in brackets)")
    return (_host(host) or None, _port("PROXY_ADDR", port))


def listen_address(env: Mapping[str, str]) -> tuple[str, int]:
    """(host, port) by the rule above; raises ListenAddressError naming the variable."""
    addr = proxy_addr(env)
    host_found, port_found = _first(env, HOST_VARS), _first(env, PORT_VARS)
    host = _host(host_found[1]) if host_found else (addr[0] if addr and addr[0] else DEFAULT_HOST)
    port = _port(*port_found) if port_found else (addr[1] if addr else DEFAULT_PORT)
    return host, port


def join_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bind(env: Mapping[str, str]) -> str:
    """Gunicorn's `bind`: `host:port`, or `[v6]:port`."""
    return join_address(*listen_address(env))


def probe_url(env: Mapping[str, str], path: str = "/healthz") -> str:
    """A URL that reaches the listener from the same machine (wildcard hosts -> loopback)."""
    host, port = listen_address(env)
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://{join_address(host, port)}{path}"


def probe(env: Mapping[str, str], timeout: float = 4.0) -> int:
    """0 when `GET /healthz` on the listen address answers 200, else 1 (the reason on stderr)."""
    import urllib.request

    try:
        url = probe_url(env)
    except ListenAddressError as exc:
        print(f"cot-proxy: configuration error: {exc}", file=sys.stderr)
        return 1
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            ok = resp.status == 200
    except Exception as exc:  # any failure is "unhealthy"
        print(f"cot-proxy: {url}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0 if ok else 1


def _environment() -> Mapping[str, str]:
    """The process environment plus `.env`, as Config.from_env reads it (environment wins)."""
    try:
        from dotenv import load_dotenv
    except ImportError:
        return os.environ
    load_dotenv(override=False)  # searches from this file's folder upwards, as app/config.py's call does
    return os.environ


if __name__ == "__main__":
    if sys.argv[1:] == ["--probe"]:
        raise SystemExit(probe(_environment()))
    try:
        print(bind(_environment()))
    except ListenAddressError as exc:
        raise SystemExit(f"cot-proxy: configuration error: {exc}") from None

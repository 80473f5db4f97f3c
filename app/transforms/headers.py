"""Header scrubbing: hop-by-hop headers both ways, gateway noise on the way back."""

from __future__ import annotations

from ..exchange import Exchange
from .base import Transform

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# Set by the proxy or by the HTTP client library for the upstream connection.
REQUEST_ONLY = frozenset({"host", "content-length"})
# Livepeer gateway bookkeeping that confuses clients and leaks orchestrator details.
GATEWAY_NOISE = frozenset({"livepeer-balance", "x-metadata", "x-orchestrator-url"})


def _connection_tokens(headers: dict[str, str]) -> set[str]:
    value = headers.get("connection", "")
    return {token.strip().lower() for token in value.split(",") if token.strip()}


class HeaderScrub(Transform):
    name = "header_scrub"

    def request(self, ex: Exchange) -> None:
        drop = HOP_BY_HOP | REQUEST_ONLY | _connection_tokens(ex.headers)
        for key in [k for k in ex.headers if k in drop]:
            del ex.headers[key]

    def response_headers(self, ex: Exchange, status: int, headers: dict[str, str]) -> None:
        drop = HOP_BY_HOP | GATEWAY_NOISE | _connection_tokens(headers)
        for key in [k for k in headers if k in drop]:
            del headers[key]

"""Request and response steps for a Livepeer gateway target."""

from __future__ import annotations

from ..exchange import Exchange
from ..transforms.base import Transform

# Auth happens in front of the gateway: nothing else of the client's goes there.
FORWARDED = ("content-type", "accept", "x-request-id")


class LivepeerGateway(Transform):
    """Forward only what the gateway needs; fix the Content-Type it gets wrong."""

    name = "livepeer"

    def applies(self, ex: Exchange) -> bool:
        return ex.target is not None and ex.target.kind == "livepeer"

    def request(self, ex: Exchange) -> None:
        ex.headers = {k: ex.headers[k] for k in FORWARDED if k in ex.headers}

    def response_headers(self, ex: Exchange, status: int, headers: dict[str, str]) -> None:
        # The gateway may label an SSE stream text/plain.
        sse = headers.get("content-type", "").startswith("text/event-stream")
        if sse or (status < 400 and ex.family == "chat" and ex.streaming):
            headers["content-type"] = "text/event-stream"
        else:
            headers["content-type"] = "application/json"

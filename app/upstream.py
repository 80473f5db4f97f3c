"""Talking to upstream servers: one pooled `requests.Session` per worker.

`map_requests_error` is the one place where `requests`/`urllib3` exceptions
become our own (`app.errors`). Messages name the upstream by scheme, host and
port only: never a path, query or header, which may carry a secret.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import IO
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict
from urllib3.exceptions import DecodeError, ProtocolError, ReadTimeoutError

from .errors import ProxyError, UpstreamBadResponse, UpstreamTimeout, UpstreamUnavailable

READ_SIZE = 64 * 1024


@dataclass(frozen=True)
class Target:
    """Where one request goes: a base URL ending in `/` that `/v1/<rest>` maps under."""

    base_url: str
    api_key: str | None = field(default=None, repr=False)
    connect_timeout: float = 10.0
    read_timeout: float = 600.0
    name: str = "default"
    kind: str = "openai"
    """`openai` (any OpenAI-compatible server) or `livepeer` (a BYOC gateway)."""
    headers: Mapping[str, str] = field(default_factory=dict)
    """Sent with every request to this target, after the transforms ran."""

    def url(self, path: str, query: str = "") -> str:
        return self.base_url + path + ("?" + query if query else "")

    @cached_property
    def public_url(self) -> str:
        """The base URL without credentials or query: what /health may show."""
        parts = urlsplit(self.base_url)
        return self.origin + parts.path

    @cached_property
    def origin(self) -> str:
        """scheme://host:port: safe to show in messages and logs."""
        parts = urlsplit(self.base_url)
        return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


def map_requests_error(exc: BaseException, target: Target) -> ProxyError:
    """Translate a `requests`/`urllib3`/socket failure into our exception tree."""
    where = target.origin
    if isinstance(exc, (requests.exceptions.Timeout, ReadTimeoutError, TimeoutError)) or _wraps(exc, ReadTimeoutError):
        return UpstreamTimeout(f"Upstream {where} did not answer within the timeout.")
    if isinstance(exc, requests.exceptions.SSLError):
        return UpstreamUnavailable(f"TLS handshake with upstream {where} failed.")
    if isinstance(exc, (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError,
                        ProtocolError, DecodeError)) or _wraps(exc, ProtocolError):
        return UpstreamBadResponse(f"Upstream {where} broke off or sent a malformed response.")
    if isinstance(exc, (requests.exceptions.ConnectionError, OSError)):
        return UpstreamUnavailable(f"Cannot connect to upstream {where}.")
    return UpstreamBadResponse(f"Request to upstream {where} failed ({type(exc).__name__}).")


def _wraps(exc: BaseException, kind: type[BaseException]) -> bool:
    seen = 0
    cur: BaseException | None = exc
    while cur is not None and seen < 5:
        if isinstance(cur, kind) or any(isinstance(a, kind) for a in getattr(cur, "args", ())):
            return True
        cur = cur.__cause__ or cur.__context__
        seen += 1
    return False


class Upstream:
    """The worker's HTTP client: one pooled `requests` adapter (keep-alive).

    `send` hands a prepared request straight to the adapter. `Session.request`
    would re-merge settings, cookies, hooks and proxy environment on every call,
    about a third of the proxy's CPU per request, for nothing a relay needs:
    the client's headers and body go upstream as they are.
    """

    def __init__(self, pool_size: int = 1024) -> None:
        session = requests.Session()
        session.trust_env = False
        session.headers.clear()
        self.adapter = HTTPAdapter(pool_connections=16, pool_maxsize=pool_size, max_retries=0)
        session.mount("http://", self.adapter)
        session.mount("https://", self.adapter)
        self.session = session
        """For the proxy's own side requests (health probes); relayed traffic uses `send`."""

    def send(
        self,
        target: Target,
        method: str,
        url: str,
        headers: dict[str, str],
        body: bytes | IO[bytes] | Iterator[bytes] | None,
        read_timeout: float | None = None,
    ) -> requests.Response:
        """Send and return the response with its body unread (`stream=True`)."""
        timeout = (target.connect_timeout, read_timeout if read_timeout is not None else target.read_timeout)
        prepared = requests.PreparedRequest()
        prepared.method = method
        prepared.url = url
        prepared.headers = CaseInsensitiveDict(headers)
        prepared.body = body
        prepared.hooks = {"response": []}
        if body is not None:
            prepared.headers["Content-Length"] = str(len(body))  # never chunked: see relay.SizedStream
        elif method in ("POST", "PUT", "PATCH"):
            prepared.headers["Content-Length"] = "0"
        try:
            return self.adapter.send(prepared, stream=True, timeout=timeout)
        except requests.RequestException as exc:
            raise map_requests_error(exc, target) from None

    def close(self) -> None:
        self.session.close()


def iter_decoded(resp: requests.Response) -> Iterator[bytes]:
    """Body bytes (content-decoded) as they arrive, whatever the framing.

    `iter_content(None)` only yields per chunk for chunked bodies; for a body
    with a Content-Length or one delimited by close it would wait for the end.
    """
    raw = resp.raw
    if raw.chunked and raw.supports_chunked_reads():
        yield from raw.stream(None, decode_content=True)
        return
    while True:
        data = raw.read1(READ_SIZE)
        if not data:
            return
        yield data


def iter_raw(resp: requests.Response) -> Iterator[bytes]:
    """Body bytes exactly as sent (still content-encoded), for pass-through."""
    yield from resp.raw.stream(READ_SIZE, decode_content=False)

"""Request paths: nothing leaves the upstream's base path.

The relay appends the client's path to an upstream base URL and attaches the
provider's key. A path with dot segments (`..`, `%2e%2e`, `.%2E`, doubly
encoded), encoded slashes, backslashes or empty segments could be resolved by
the upstream, or by a path-routing gateway in front of it, to somewhere outside
that base: another tenant's API, on our key. Such paths are refused with 400
`invalid_path` before routing, on every route, from the raw request target
(what the client sent, before the server decoded it), so no spelling slips by.

A trailing slash is not an empty segment and is allowed; `..;x` counts as a
dot segment (servlet containers drop path parameters before resolving).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote, urlsplit

from flask import Flask, request

from .errors import InvalidRequest

_ENCODED_BACKSLASH = re.compile(r"%5c", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ENCODED_CONTROL = re.compile(r"%(0[0-9a-f]|1[0-9a-f]|7f)", re.IGNORECASE)
_DECODE_ROUNDS = 3  # a doubly or triply encoded dot segment is still one
_PLAIN = re.compile(r"[A-Za-z0-9_~!$&'()*+,;=:@/-]*")
"""No `%`, `.`, backslash or control character: only `//` could make such a path a problem."""


def raw_path(environ: dict[str, Any]) -> str:
    """The path as the client sent it (RAW_URI from Gunicorn and werkzeug), else PATH_INFO."""
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if not raw:
        return environ.get("PATH_INFO", "") or "/"
    if "://" in raw.split("?", 1)[0]:  # absolute-form request target
        raw = urlsplit(raw).path or "/"
    return raw.split("?", 1)[0]


def problem(path: str) -> str | None:
    """Why `path` (raw, still percent-encoded) may not be relayed, or None."""
    if _PLAIN.fullmatch(path) and "//" not in path:
        return None  # the common case, in one C call
    if "\\" in path:
        return "a backslash"
    if _ENCODED_BACKSLASH.search(path):
        return "an encoded backslash"
    if _ENCODED_CONTROL.search(path) or _CONTROL.search(path):
        return "a control character"
    segments = path.split("/")[1:]
    for i, segment in enumerate(segments):
        if not segment:
            if i < len(segments) - 1:
                return "an empty segment (//)"
            continue
        why = _segment_problem(segment)
        if why is not None:
            return why
    return None


def _segment_problem(segment: str) -> str | None:
    """Why one segment may not be relayed, looking through up to `_DECODE_ROUNDS` of encoding."""
    value = segment
    for _ in range(_DECODE_ROUNDS + 1):
        # An encoded slash is kept (model ids such as `provider/model` need it), but what it
        # separates must not be a dot segment or empty once decoded.
        parts = value.split("/")
        # `..;x` is a dot segment to servlet containers (path parameters).
        if any(p.split(";", 1)[0] in (".", "..") for p in parts):
            return "a dot segment"
        if "" in parts[1:-1] or (len(parts) > 1 and "" in (parts[0], parts[-1])):
            return "an empty segment (encoded //)"
        if "\\" in value:
            return "a backslash"
        if "%" not in value:
            break
        value = unquote(value)
    return None


def confine() -> None:
    """`before_request`: refuse a path that could escape the upstream's base path."""
    why = problem(raw_path(request.environ))
    if why is None:
        why = problem(request.environ.get("PATH_INFO", ""))  # what the server decoded, as a second look
    if why is not None:
        raise InvalidRequest(f"The request path contains {why}; such paths are refused.", code="invalid_path")


def init_app(app: Flask) -> None:
    # No 308 to a "merged" URL built from the client's Host header: `//` is refused instead.
    app.url_map.merge_slashes = False
    app.before_request(confine)

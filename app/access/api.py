"""`GET /v1/usage`: usage totals per key and model, for the holder of ADMIN_TOKEN.

Query: `key` (a key's name), `since` and `until` (ISO 8601 or Unix seconds), each
at most once. A parameter with control characters, an absurd length or a value
that is not a time is 400 `invalid_request_error` naming it; nothing unchecked
reaches SQL. (Werkzeug keeps %-escapes that are not UTF-8 as written: plain text.)
Off (404) while ADMIN_TOKEN is unset; with ADMIN_ALLOWED_IPS only those clients
reach it (403 `ip_not_allowed` for others, before the token is looked at). This
worker's pending records are written first, so a caller sees its own requests at
once; other workers' arrive within USAGE_FLUSH_SECONDS.
"""

from __future__ import annotations

import hmac
import re
import unicodedata
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Flask, Response, current_app, jsonify, request

from ..clientip import allow_only
from ..errors import AuthenticationError, InvalidRequest, NotFound
from .auth import bearer
from .guard import AccessGuard

if TYPE_CHECKING:
    from .store import KeyStore

bp = Blueprint("access", __name__)

MAX_KEY_CHARS = 200
"""A key's name is at most this long (the column's size)."""
MAX_TIME_CHARS = 64
_UNIX_SECONDS = re.compile(r"[0-9]{1,10}(\.[0-9]{1,6})?")  # as app/openapi.yaml's Instant


def find_guard(app: Flask) -> AccessGuard | None:
    relay = app.extensions.get("cot_proxy.relay")
    for t in getattr(getattr(relay, "pipeline", None), "transforms", ()):
        if isinstance(t, AccessGuard):
            return t
    return None


def check_text(value: str, param: str, max_chars: int) -> str:
    """`value` if it is text a database can hold and compare; else 400 naming `param`."""
    if len(value) > max_chars:
        raise InvalidRequest(f"'{param}' is too long ({len(value)} characters; at most {max_chars}).", param=param)
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in value):
        raise InvalidRequest(f"'{param}' must not contain control characters.", param=param)
    return value


def parse_time(value: str | None, param: str) -> datetime | None:
    """ISO 8601 (a zone-less time is UTC) or Unix seconds -> an aware UTC datetime; None if empty."""
    if value is None or not value.strip():
        return None
    value = check_text(value.strip(), param, MAX_TIME_CHARS)
    bad = InvalidRequest(f"'{param}' must be an ISO 8601 time or Unix seconds (got {value!r}).", param=param)
    try:
        if _UNIX_SECONDS.fullmatch(value):
            return datetime.fromtimestamp(float(value), timezone.utc)
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)
    except (ValueError, OverflowError, OSError):  # also a year past 9999 or before 1 once moved to UTC
        raise bad from None


def _once(name: str) -> str | None:
    values = request.args.getlist(name)
    if len(values) > 1:
        raise InvalidRequest(f"Give '{name}' at most once (got it {len(values)} times).", param=name)
    return values[0] if values else None


def _store(app: Flask) -> tuple[KeyStore, AccessGuard | None]:
    guard = find_guard(app)
    if guard is not None:
        return guard.store(), guard
    store = app.extensions.get("cot_proxy.access_store")
    if store is None:
        from .store import KeyStore

        store = app.extensions["cot_proxy.access_store"] = KeyStore(app.config["COT"].access.database_url)
    return store, None


def admin_allowlist(config: Any) -> Any:
    """ADMIN_ALLOWED_IPS: the allow-list of every admin endpoint (this one; a keys API or console to come,
    with `@allow_only(admin_allowlist)` or `clientip.guard_blueprint(bp, admin_allowlist)`)."""
    return config.access.admin_allowed_ips


@bp.get("/v1/usage")
@allow_only(admin_allowlist)  # before the token is looked at: others get 403 ip_not_allowed
def usage() -> Response:
    settings = current_app.config["COT"].access
    if not settings.admin_token:
        raise NotFound("GET /v1/usage is off: set ADMIN_TOKEN to enable it.", code="usage_disabled")
    given = bearer({"authorization": request.headers.get("Authorization", "")}) or ""
    if not hmac.compare_digest(given.encode(), settings.admin_token.encode()):
        raise AuthenticationError(
            "GET /v1/usage needs 'Authorization: Bearer <ADMIN_TOKEN>'.", headers={"WWW-Authenticate": "Bearer"}
        )
    since = parse_time(_once("since"), "since")
    until = parse_time(_once("until"), "until")
    if since is not None and until is not None and since > until:
        raise InvalidRequest("'until' must not be before 'since'.", param="until")
    key = _once("key") or None
    if key is not None:
        check_text(key, "key", MAX_KEY_CHARS)
    store, guard = _store(current_app)
    if guard is not None and guard.writer is not None:
        guard.writer.flush()
    data = store.usage(key=key, since=since, until=until)
    return jsonify(
        object="list",
        data=data,
        key=key,
        since=since.isoformat() if since else None,
        until=until.isoformat() if until else None,
    )


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)

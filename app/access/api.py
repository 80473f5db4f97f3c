"""`GET /v1/usage`: usage totals per key and model, for the holder of ADMIN_TOKEN.

Query: `key` (a key's name), `since` and `until` (ISO 8601 or Unix seconds).
Off (404) while ADMIN_TOKEN is unset. This worker's pending records are
written first, so a caller sees its own requests at once; other workers'
arrive within USAGE_FLUSH_SECONDS.
"""

from __future__ import annotations

import hmac
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from flask import Blueprint, Flask, Response, current_app, jsonify, request

from ..errors import AuthenticationError, InvalidRequest, NotFound
from .auth import bearer
from .guard import AccessGuard

if TYPE_CHECKING:
    from .store import KeyStore

bp = Blueprint("access", __name__)


def find_guard(app: Flask) -> AccessGuard | None:
    relay = app.extensions.get("cot_proxy.relay")
    for t in getattr(getattr(relay, "pipeline", None), "transforms", ()):
        if isinstance(t, AccessGuard):
            return t
    return None


def parse_time(value: str | None, param: str) -> datetime | None:
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        if value.replace(".", "", 1).isdigit():
            return datetime.fromtimestamp(float(value), timezone.utc)
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except (ValueError, OverflowError):
        raise InvalidRequest(f"'{param}' must be ISO 8601 or Unix seconds (got {value!r}).", param=param) from None
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)


def _store(app: Flask) -> tuple[KeyStore, AccessGuard | None]:
    guard = find_guard(app)
    if guard is not None:
        return guard.store(), guard
    store = app.extensions.get("cot_proxy.access_store")
    if store is None:
        from .store import KeyStore

        store = app.extensions["cot_proxy.access_store"] = KeyStore(app.config["COT"].access.database_url)
    return store, None


@bp.get("/v1/usage")
def usage() -> Response:
    settings = current_app.config["COT"].access
    if not settings.admin_token:
        raise NotFound("GET /v1/usage is off: set ADMIN_TOKEN to enable it.", code="usage_disabled")
    given = bearer({"authorization": request.headers.get("Authorization", "")}) or ""
    if not hmac.compare_digest(given.encode(), settings.admin_token.encode()):
        raise AuthenticationError("GET /v1/usage needs 'Authorization: Bearer <ADMIN_TOKEN>'.",
                                  headers={"WWW-Authenticate": "Bearer"})
    since = parse_time(request.args.get("since"), "since")
    until = parse_time(request.args.get("until"), "until")
    key = request.args.get("key") or None
    store, guard = _store(current_app)
    if guard is not None and guard.writer is not None:
        guard.writer.flush()
    data = store.usage(key=key, since=since, until=until)
    return jsonify(object="list", data=data, key=key,
                   since=since.isoformat() if since else None, until=until.isoformat() if until else None)


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)

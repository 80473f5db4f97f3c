"""The `/ui/` blueprint: five pages, the login, and the JSON endpoints the pages read.

Open on purpose: GET/POST /ui/login and /ui/static/. Everything else needs the session
cookie (or, for /ui/api/, `Authorization: Bearer <ADMIN_TOKEN>`), and every POST the CSRF
token. ADMIN_ALLOWED_IPS applies to all of it, the login included. docs/ui.md lists each
endpoint's JSON.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, jsonify, redirect, render_template, request

from ..access.api import admin_allowlist, find_guard
from ..clientip import client_text, guard_blueprint
from ..errors import InvalidRequest, NotFound
from . import auth, data
from .keys import parse_limits, parse_models, update_limits
from .live import LiveRequests
from .timeseries import Sampler

log = logging.getLogger("cot_proxy.ui")
bp = Blueprint(
    "ui", __name__, url_prefix="/ui", template_folder="templates", static_folder="static", static_url_path="/static"
)
guard_blueprint(bp, admin_allowlist)  # ADMIN_ALLOWED_IPS: others get 403 ip_not_allowed, login page too

PAGES = (("overview", "Overview"), ("backends", "Backends"), ("keys", "Keys"), ("live", "Live"), ("config", "Config"))
SAMPLER = "cot_proxy.ui.sampler"
THROTTLE = "cot_proxy.ui.login_throttle"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)


@bp.after_request
def _headers(response: Response) -> Response:
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    if request.endpoint != "ui.static":
        response.headers["Cache-Control"] = "no-store"
    return response


def live_registry() -> LiveRequests | None:
    relay = current_app.extensions.get("cot_proxy.relay")
    for t in getattr(getattr(relay, "pipeline", None), "transforms", ()):
        if isinstance(t, LiveRequests):
            return t
    return None


def _families() -> Any:
    from ..observability import metrics

    return metrics.scrape_registry().collect()


def _page(name: str) -> str:
    return render_template(f"ui/{name}.html", page=name, pages=PAGES, csrf=g.get("ui_csrf"))


# -- login --------------------------------------------------------------------


def _safe_next(raw: str | None) -> str:
    """Only a console path: never another site (`//host`) nor a scheme."""
    if raw and raw.startswith("/ui/") and "//" not in raw and "\\" not in raw and len(raw) < 200:
        return raw
    return "/ui/"


def _login_form(status: int = 200, error: str | None = None) -> Response:
    nonce = auth.login_nonce()
    body = render_template(
        "ui/login.html",
        page="login",
        pages=(),
        error=error,
        csrf=auth.csrf_for(nonce, "login"),
        next=_safe_next(request.values.get("next")),
    )
    response = Response(body, status=status, mimetype="text/html")
    auth.set_cookie(response, auth.LOGIN_COOKIE, nonce, auth.LOGIN_SECONDS)
    return response


@bp.get("/login")
def login() -> Response:
    if auth.current_nonce() is not None:
        return redirect(_safe_next(request.args.get("next")), code=303)
    return _login_form()


@bp.post("/login")
def login_post() -> Response:
    nonce = request.cookies.get(auth.LOGIN_COOKIE)
    if not auth.csrf_ok(nonce, request.form.get(auth.CSRF_FIELD), "login"):
        return _login_form(403, "The form expired or came from elsewhere: please try again.")
    throttle: auth.LoginThrottle = current_app.extensions[THROTTLE]
    client = client_text(request, current_app.config["COT"].access.trusted_proxies) or "unknown"
    wait = throttle.retry_after(client)
    if wait:
        response = _login_form(429, f"Too many wrong tokens: try again in {int(wait) + 1} s.")
        response.headers["Retry-After"] = str(int(wait) + 1)
        return response
    if not auth.token_matches(request.form.get("token", "")):
        throttle.failed(client)
        log.warning("console: wrong ADMIN_TOKEN at the login from %s", client)
        return _login_form(401, "That is not the ADMIN_TOKEN.")
    response = redirect(_safe_next(request.form.get("next")), code=303)
    auth.set_cookie(response, auth.SESSION_COOKIE, auth.new_session(), auth.SESSION_SECONDS)
    auth.clear_cookie(response, auth.LOGIN_COOKIE)
    return response


@bp.post("/logout")
@auth.login_required
def logout() -> Response:
    response = redirect("/ui/login", code=303)
    auth.clear_cookie(response, auth.SESSION_COOKIE)
    return response


# -- pages --------------------------------------------------------------------


@bp.get("/")
@auth.login_required
def overview() -> str:
    return _page("overview")


@bp.get("/backends")
@auth.login_required
def backends() -> str:
    return _page("backends")


@bp.get("/keys")
@auth.login_required
def keys() -> str:
    return _page("keys")


@bp.get("/live")
@auth.login_required
def live() -> str:
    return _page("live")


@bp.get("/config")
@auth.login_required
def config() -> str:
    return _page("config")


# -- JSON -----------------------------------------------------------------------


@bp.get("/api/overview")
@auth.login_required
def api_overview() -> Response:
    span = request.args.get("span", "hour")
    if span not in ("hour", "day"):
        raise InvalidRequest("'span' must be 'hour' or 'day'.", param="span")
    return jsonify(current_app.extensions[SAMPLER].series(span))


def _snapshots() -> list[dict[str, Any]]:
    registry = live_registry()
    return registry.snapshots() if registry is not None else []


@bp.get("/api/backends")
@auth.login_required
def api_backends() -> Response:
    return jsonify(data.backends_view(_snapshots(), _families()))


def _store() -> Any:
    guard = find_guard(current_app)
    if guard is None:
        raise NotFound("No access guard in the pipeline: the key store is not available.", code="keys_unavailable")
    return guard


def _json_body() -> dict[str, Any]:
    body = request.get_json(silent=True) if request.is_json else request.form.to_dict()
    if not isinstance(body, dict):
        raise InvalidRequest("Send a JSON object.")
    return body


@bp.get("/api/keys")
@auth.login_required
def api_keys() -> Response:
    guard = _store()
    if guard.writer is not None:
        guard.writer.flush()  # this worker's pending usage first, as GET /v1/usage does
    store = guard.store()
    settings = current_app.config["COT"].access
    return jsonify(
        keys=[k.as_dict() for k in store.list()],
        usage=store.usage(),
        virtual_keys=settings.virtual_keys,
        usage_accounting=settings.usage_accounting,
    )


@bp.post("/api/keys")
@auth.login_required
def api_key_create() -> Response:
    body = _json_body()
    name = body.get("name")
    if not isinstance(name, str):
        raise InvalidRequest("'name' is required: a name for the key.", param="name")
    limits = parse_limits(body)
    try:
        secret, record = (
            _store()
            .store()
            .create(
                name.strip(),
                models=parse_models(body.get("models")),
                rpm=limits.get("rpm"),
                tpm=limits.get("tpm"),
                max_concurrent=limits.get("max_concurrent"),
                budget=limits.get("budget"),
            )
        )
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="name") from None
    response = jsonify(
        key=secret,
        record=record.as_dict(),
        note="The key is shown this once: copy it now; only its last 4 characters are kept.",
    )
    response.status_code = 201
    return response


@bp.post("/api/keys/<int:key_id>/revoke")
@auth.login_required
def api_key_revoke(key_id: int) -> Response:
    store = _store().store()
    if store.lookup_by_id(key_id) is None:
        raise NotFound(f"No key with id {key_id}.", code="key_not_found")
    revoked = store.revoke(str(key_id))
    record = revoked[0] if revoked else store.lookup_by_id(key_id)
    return jsonify(record=record.as_dict(), revoked=bool(revoked))


@bp.post("/api/keys/<int:key_id>/limits")
@auth.login_required
def api_key_limits(key_id: int) -> Response:
    record = update_limits(_store().store(), key_id, parse_limits(_json_body()))
    return jsonify(record=record.as_dict())


@bp.get("/api/live")
@auth.login_required
def api_live() -> Response:
    snaps = _snapshots()
    entries = [e for s in snaps for e in s.get("live", ())]
    now = time.time()
    for e in entries:  # ages from each entry's start: a snapshot may be half a second old
        e["age_s"] = round(max(0.0, now - e.get("started_at", now)), 1)
    entries.sort(key=lambda e: -e["age_s"])
    return jsonify(workers=len(snaps), requests=entries, enabled=live_registry() is not None)


@bp.post("/api/live/<live_id>/cancel")
@auth.login_required
def api_live_cancel(live_id: str) -> Response:
    registry = live_registry()
    if len(live_id) > 40 or registry is None or not registry.cancel(live_id):
        raise NotFound(f"No open request {live_id[:40]!r} (it may have just ended).", code="request_not_found")
    response = jsonify(id=live_id, cancelling=True)
    response.status_code = 202
    return response


@bp.get("/api/config")
@auth.login_required
def api_config() -> Response:
    config = current_app.config["COT"]
    return jsonify(config=data.config_view(config), routing=data.routing_view(config))


def register(app: Flask, config: Any) -> None:
    app.register_blueprint(bp)
    app.extensions[THROTTLE] = auth.LoginThrottle()
    shared = None
    access = config.access
    if access.redis_url:  # the Overview adds up every instance's steps
        from .timeseries import SharedSeries

        shared = SharedSeries(
            access.redis_url,
            access.redis_prefix,
            access.redis_timeout,
            instance=f"{socket.gethostname()}:{os.getppid()}",
        )  # the Gunicorn master's pid
    sampler = app.extensions[SAMPLER] = Sampler(_families, shared=shared)
    sampler.start()
    router = app.extensions.get("cot_proxy.router")
    with app.app_context():
        registry = live_registry()
    if registry is not None:
        registry.backend_state = lambda: data.router_state(router)
        registry.start()

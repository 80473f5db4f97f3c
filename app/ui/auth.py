"""The console's login: ADMIN_TOKEN once, then a signed session cookie; CSRF tokens bound to it.

The signing key is HMAC(ADMIN_TOKEN, purpose), so every Gunicorn worker and every replica
with the same token agrees on it without sharing state (a random per-process secret would
log the operator out whenever the next request lands on another worker). Changing
ADMIN_TOKEN ends every session. The cookie holds no secret: `v1.<issued>.<nonce>.<mac>`.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Response, current_app, g, jsonify, redirect, request, url_for

SESSION_COOKIE = "cot_ui_session"
LOGIN_COOKIE = "cot_ui_login"
"""Pre-login nonce (double-submit): the login form's CSRF token is bound to it."""
SESSION_SECONDS = 8 * 3600
LOGIN_SECONDS = 3600
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
MAX_COOKIE_CHARS = 200

LOGIN_FAILURES = 10
LOGIN_WINDOW_SECONDS = 60.0
"""At most LOGIN_FAILURES wrong tokens per client address and window, per worker: then 429 until it slides."""
MAX_TRACKED_CLIENTS = 10_000

F = TypeVar("F", bound=Callable[..., Any])


class LoginThrottle:
    """Wrong tokens per client address in a sliding window (per worker: a guesser spread over workers
    gets LOGIN_FAILURES x workers tries a minute, still nothing against a 16+ character token)."""

    def __init__(self, limit: int = LOGIN_FAILURES, window: float = LOGIN_WINDOW_SECONDS) -> None:
        self.limit, self.window = limit, window
        self._failures: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, client: str, now: float | None = None) -> float:
        """Seconds until `client` may try again (0: now)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            times = [t for t in self._failures.get(client, ()) if now - t < self.window]
            if times:
                self._failures[client] = times
            else:
                self._failures.pop(client, None)
            return 0.0 if len(times) < self.limit else max(0.1, self.window - (now - times[0]))

    def failed(self, client: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            if len(self._failures) >= MAX_TRACKED_CLIENTS and client not in self._failures:
                self._failures.pop(next(iter(self._failures)))  # bounded: the oldest client goes
            self._failures.setdefault(client, []).append(now)


def _key(token: str) -> bytes:
    return hmac.new(token.encode(), b"cot-proxy ui session v1", hashlib.sha256).digest()


def _mac(key: bytes, *parts: str) -> str:
    return hmac.new(key, ".".join(parts).encode(), hashlib.sha256).hexdigest()


def admin_token() -> str:
    return current_app.config["COT"].access.admin_token or ""


def token_matches(given: str) -> bool:
    want = admin_token()
    return bool(want) and hmac.compare_digest(given.encode(), want.encode())


def new_session_for(token: str, now: float) -> str:
    issued = str(int(now))
    nonce = secrets.token_urlsafe(18)
    return f"v1.{issued}.{nonce}.{_mac(_key(token), 'session', issued, nonce)}"


def new_session(now: float | None = None) -> str:
    return new_session_for(admin_token(), now if now is not None else time.time())


def session_nonce(value: str | None, now: float | None = None) -> str | None:
    """The nonce of a valid, unexpired session cookie, else None (never raises)."""
    if not value or len(value) > MAX_COOKIE_CHARS or not admin_token():
        return None
    parts = value.split(".")
    if len(parts) != 4 or parts[0] != "v1" or not parts[1].isdigit():
        return None
    _, issued, nonce, mac = parts
    if not hmac.compare_digest(mac.encode(), _mac(_key(admin_token()), "session", issued, nonce).encode()):
        return None
    age = (now if now is not None else time.time()) - int(issued)
    return nonce if -60 <= age <= SESSION_SECONDS else None


def csrf_for(nonce: str, purpose: str = "csrf") -> str:
    return _mac(_key(admin_token()), purpose, nonce)


def csrf_ok(nonce: str | None, given: str | None, purpose: str = "csrf") -> bool:
    if not nonce or not given or len(given) > MAX_COOKIE_CHARS:
        return False
    return hmac.compare_digest(given.encode(), csrf_for(nonce, purpose).encode())


def login_nonce() -> str:
    """The login form's nonce: the one in the pre-login cookie if it looks right, else a new one."""
    value = request.cookies.get(LOGIN_COOKIE, "")
    if 16 <= len(value) <= 64 and value.replace("-", "").replace("_", "").isalnum():
        return value
    return secrets.token_urlsafe(18)


def over_https() -> bool:
    """HTTPS here, or at a proxy in TRUSTED_PROXIES that says so (`X-Forwarded-Proto`): cookies get `Secure`."""
    if request.is_secure:
        return True
    from ..clientip import address

    trusted = current_app.config["COT"].access.trusted_proxies
    peer = address(request.remote_addr)
    proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return trusted is not None and peer is not None and peer in trusted and proto == "https"


def set_cookie(response: Response, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name, value, max_age=max_age, path="/ui/", httponly=True, samesite="Strict", secure=over_https()
    )


def clear_cookie(response: Response, name: str) -> None:
    response.delete_cookie(name, path="/ui/", httponly=True, samesite="Strict", secure=over_https())


def current_nonce() -> str | None:
    return session_nonce(request.cookies.get(SESSION_COOKIE))


def bearer_ok() -> bool:
    """`Authorization: Bearer <ADMIN_TOKEN>`, as GET /v1/usage takes it (browsers never add it on their own)."""
    from ..access.auth import bearer

    given = bearer({"authorization": request.headers.get("Authorization", "")})
    return given is not None and token_matches(given)


def _wants_json() -> bool:
    return request.path.startswith("/ui/api/")


def refuse(status: int, code: str, message: str) -> Response:
    """JSON endpoints get the proxy's error envelope; pages go to the login form."""
    if _wants_json() or request.method != "GET":
        body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
        response = jsonify(body)
        response.status_code = status
        return response
    return redirect(url_for("ui.login", next=request.path), code=303)


def login_required(view: F) -> F:
    """A page or endpoint behind the login; state-changing methods also need the CSRF token."""

    @functools.wraps(view)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        if _wants_json() and bearer_ok():  # scripts: no cookie, so no CSRF to fear
            g.ui_csrf = None
            return view(*args, **kwargs)
        nonce = current_nonce()
        if nonce is None:
            return refuse(401, "login_required", "Log in to the console first (POST /ui/login with ADMIN_TOKEN).")
        if request.method not in ("GET", "HEAD"):
            given = request.headers.get(CSRF_HEADER) or request.form.get(CSRF_FIELD)
            if not csrf_ok(nonce, given):
                return refuse(403, "csrf_failed", f"Missing or wrong CSRF token (send it in {CSRF_HEADER}).")
        g.ui_csrf = csrf_for(nonce)
        return view(*args, **kwargs)

    guarded.ui_login_required = True  # type: ignore[attr-defined]  # the route inventory test reads it
    return guarded  # type: ignore[return-value]

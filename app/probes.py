"""Liveness and readiness probes.

`/healthz`, `/livez`: the process runs. `/readyz` and `/health` answer 503 `draining` from the
moment Gunicorn's master got SIGTERM (gunicorn.conf.py leaves a marker file, named in the
environment it hands its workers), before its listeners close. `/health`, `/readyz`: with one
upstream, it answers at all (any HTTP status counts, as in cot_proxy), checked
at most every `health_cache_seconds`; with several providers, at least one
backend of the default provider is up (passive and active health), and the
body lists every backend's state.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify

from .config import Config
from .errors import ProxyError
from .routing.router import Router
from .upstream import Upstream, map_requests_error

bp = Blueprint("probes", __name__)
PROBE_TIMEOUT = 5.0
DRAIN_FILE_VAR = "COT_PROXY_DRAIN_FILE"
"""Set by gunicorn.conf.py's master for its workers; internal, not a setting."""


def draining() -> bool:
    marker = os.environ.get(DRAIN_FILE_VAR)
    return bool(marker) and os.path.exists(marker)


class HealthCheck:
    def __init__(self, config: Config, router: Router, upstream: Upstream) -> None:
        self.ttl = config.health_cache_seconds
        self.router = router
        self.upstream = upstream
        self._lock = threading.Lock()
        self._checked_at = -1e9
        self._result: tuple[int, dict[str, Any]] = (200, {})

    def status(self) -> tuple[int, dict[str, Any]]:
        if not self.router.transparent:
            ready, detail = self.router.readiness()
            return (200 if ready else 503), {"status": "healthy" if ready else "unhealthy", **detail}
        target = self.router.health_target
        if target is None:
            return 200, {"status": "healthy", "target_url": None, "mode": "echo"}
        now = time.monotonic()
        with self._lock:
            if now - self._checked_at < self.ttl:
                return self._result
        try:
            timeout = min(PROBE_TIMEOUT, target.connect_timeout or PROBE_TIMEOUT)
            resp = self.upstream.session.get(target.base_url, timeout=(timeout, PROBE_TIMEOUT), stream=True)
            resp.close()
            result = (200, {"status": "healthy", "target_url": target.public_url})
        except Exception as exc:  # any failure to get an answer means unhealthy
            error: ProxyError = map_requests_error(exc, target)
            result = (503, {"status": "unhealthy", "error": f"Health check failed: {error.message}"})
        with self._lock:
            self._checked_at, self._result = time.monotonic(), result
        return result


@bp.get("/healthz")
@bp.get("/livez")
def live() -> Response:
    return jsonify(status="ok")


@bp.get("/health")
@bp.get("/readyz")
def ready() -> tuple[Response, int]:
    if draining():
        return jsonify(status="draining"), 503
    check: HealthCheck = current_app.extensions["cot_proxy.health"]
    status, body = check.status()
    return jsonify(body), status


def init_app(app: Flask, check: HealthCheck) -> None:
    app.extensions["cot_proxy.health"] = check
    app.register_blueprint(bp)

"""The operator console at `/ui/`: traffic, backends, keys, live streams and the effective configuration.

    auth.py        the login (ADMIN_TOKEN), the signed session cookie and CSRF tokens
    timeseries.py  a per-worker sampler of the instance's aggregated metrics into two rings
    live.py        the live-request registry (a transform) and its per-instance shared directory
    data.py        what each page shows, as JSON (backends, keys, configuration with secrets masked)
    views.py       the blueprint: HTML pages and their JSON endpoints under /ui/api/

Off (no route at all, so /ui/ is a 404) while ADMIN_TOKEN is unset: the console fails closed.
Nothing is imported here at module level: the transform list imports `pipeline_steps`.
"""

from __future__ import annotations

from typing import Any


def enabled(config: Any) -> bool:
    return bool(getattr(config.access, "admin_token", None))


def pipeline_steps(config: Any) -> list[Any]:
    """The live-request registry step (only with the console on), to go last in the pipeline."""
    if not enabled(config):
        return []
    from .live import LiveRequests

    a = config.access
    return [LiveRequests(a.redis_url, a.redis_prefix, a.redis_timeout)]


def init_app(app: Any, config: Any) -> None:
    """Register `/ui/` and start this worker's metrics sampler; nothing without ADMIN_TOKEN."""
    import logging

    if not enabled(config):
        logging.getLogger("cot_proxy.ui").info("operator console off: set ADMIN_TOKEN to serve /ui/")
        return
    from .views import register

    register(app, config)

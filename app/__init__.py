"""cot-proxy: an OpenAI-compatible reverse proxy. `create_app` builds it.

    request -> guard -> route -> transform request -> upstream -> transform response -> client
    (app/inbound.py -> app/relay.py; docs/architecture.md)

Importing this package imports nothing else: `app.config` and `app.listen` stay
standard-library only, so gunicorn.conf.py uses them in the master before gevent
patches the workers; Flask, requests and the rest load in `create_app`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask

    from .config import Config

log = logging.getLogger("cot_proxy")


def create_app(config: Config | None = None) -> Flask:
    """Build the app. `config=None` reads the environment (and `.env`)."""
    from flask import Flask

    from . import access, api, discovery, errors, observability, openapi, paths, probes, request_id
    from .config import Config
    from .probes import HealthCheck
    from .relay import Relay
    from .routing.router import Router
    from .transforms import build_pipeline
    from .upstream import Upstream, pick_transport

    config = config or Config.from_env()
    app = Flask("cot_proxy")
    app.config["COT"] = config
    app.config["MAX_CONTENT_LENGTH"] = config.bounds.max_request_bytes
    app.json.sort_keys = False
    # No answers Flask makes on its own: OPTIONS under /v1/ is relayed (and authenticated) like any method.
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    observability.init_app(app, config)  # logging first, then GET /metrics and its request hooks

    router = Router(config)
    router.start()
    app.extensions["cot_proxy.router"] = router
    tracing = config.observability.otel_endpoint is not None
    upstream = Upstream(transport=pick_transport(config.upstream_transport, tracing=tracing))
    log.info("upstream transport: %s", upstream.transport)
    app.extensions["cot_proxy.relay"] = Relay(config, router, upstream, build_pipeline(config))

    request_id.init_app(app)
    paths.init_app(app)  # before routing: no path that could leave the upstream's base
    errors.register(app)
    probes.init_app(app, HealthCheck(config, router, upstream))
    discovery.init_app(app)
    openapi.init_app(app)  # GET /openapi.json, open like the probes
    access.init_app(app)  # `keys` CLI and GET /v1/usage (before the /v1/ catch-all)
    from . import ui  # the operator console at /ui/ (only with ADMIN_TOKEN)

    ui.init_app(app, config)
    api.init_app(app)

    if config.livepeer is not None:
        log.info("Livepeer gateway routes go to %s", config.livepeer.gateway_url)
    for name, provider in router.providers.items():
        log.info("provider %s (%s): %s", name, provider.kind, ", ".join(b.target.origin for b in provider.backends))
    if not router.providers:
        if config.livepeer is None:
            log.warning("ECHO MODE: no TARGET_BASE_URL or BACKEND_URL set; answering locally, nothing is forwarded")
        else:
            log.warning("ECHO MODE for routes the gateway does not serve (no TARGET_BASE_URL or BACKEND_URL set)")
    return app

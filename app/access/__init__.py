"""Access: who may call the proxy, how much, and what they used.

    settings.py  AccessSettings from the environment (standard library only: config.py imports it)
    auth.py      bearer tokens, virtual keys (`sk-cp-…`), JWT -> an `Identity`
    store.py     the key store and usage records (SQLAlchemy: SQLite or PostgreSQL)
    limits.py    per-key rpm / tpm / concurrency / budget, in memory or in Redis (Lua, sliding window)
    queue.py     MAX_CONCURRENT_REQUESTS: a bounded wait for a slot, per worker
    usage.py     token estimates and the batch writer that keeps DB writes off the request path
    guard.py     `AccessGuard`, the transform that ties these into the relay (admit / done)
    cli.py       `flask --app cot_proxy keys create|list|revoke|usage`
    api.py       `GET /v1/usage` (ADMIN_TOKEN)

This module imports nothing but the standard library at import time: the
Gunicorn master imports `settings` through it before gevent patches sockets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask


def init_app(app: Flask) -> None:
    """Register the `keys` CLI group and the `/v1/usage` blueprint.

    Call after the relay exists: the endpoint shares the pipeline's AccessGuard
    (its key store and usage writer: one pool per worker)."""
    from . import api, cli

    app.cli.add_command(cli.keys)
    api.init_app(app)

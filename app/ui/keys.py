"""The Keys page's writes: parsing the operator's input, and editing a key's limits.

Create and revoke are the key store's own (app/access/store.py). The store has no update
yet, so `update_limits` writes the same table here; the guard's key cache
(KEY_CACHE_SECONDS, 0.5 s) makes every worker see the new limits, like a revocation.
"""

from __future__ import annotations

from typing import Any

from ..errors import InvalidRequest, NotFound

LIMIT_FIELDS = ("rpm", "tpm", "max_concurrent", "budget")
MAX_LIMIT = 2**53
MAX_MODELS = 100


def _limit(raw: Any, name: str) -> int | None:
    """A limit from JSON or a form: a whole number >= 0, empty or 0 = no limit."""
    if raw is None or raw == "":
        return None
    if isinstance(raw, bool):
        raise InvalidRequest(f"'{name}' must be a whole number (0 or empty: no limit).", param=name)
    try:
        value = int(raw) if isinstance(raw, (int, str)) else None
    except ValueError:
        value = None
    if value is None or value < 0 or value > MAX_LIMIT:
        raise InvalidRequest(
            f"'{name}' must be a whole number from 0 to {MAX_LIMIT} (0 or empty: no limit).", param=name
        )
    return value or None


def parse_limits(data: dict[str, Any]) -> dict[str, int | None]:
    return {name: _limit(data.get(name), name) for name in LIMIT_FIELDS if name in data}


def parse_models(raw: Any) -> list[str] | None:
    """`models`: a list of names or globs, or one comma-separated string; empty = any model."""
    if raw is None or raw == "" or raw == []:
        return None
    items = raw.split(",") if isinstance(raw, str) else raw
    if not isinstance(items, list) or not all(isinstance(m, str) for m in items):
        raise InvalidRequest(
            "'models' must be a list of model names or globs, or a comma-separated string.", param="models"
        )
    models = [m.strip() for m in items if m.strip()]
    if len(models) > MAX_MODELS or any(len(m) > 200 for m in models):
        raise InvalidRequest(f"'models': at most {MAX_MODELS} names of at most 200 characters.", param="models")
    return models or None


def update_limits(store: Any, key_id: int, limits: dict[str, int | None]) -> Any:
    """Set the given limits of key `key_id`; returns its new record (404 if there is none)."""
    from sqlalchemy import update

    from ..access.store import api_keys

    if store.lookup_by_id(key_id) is None:
        raise NotFound(f"No key with id {key_id}.", code="key_not_found")
    if limits:
        with store.engine.begin() as conn:
            conn.execute(update(api_keys).where(api_keys.c.id == key_id).values(**limits))
    return store.lookup_by_id(key_id)

"""What may be shown or logged of a secret: the one rule for every log line, record and page."""

from __future__ import annotations

MIN_HINTED = 12
"""Shorter secrets show nothing of themselves: four characters of eight would be half of it."""


def hint(secret: str | None) -> str | None:
    """`…` and the last 4 characters of a long secret (a `Bearer ` prefix ignored), `****` for a
    short one, None for none."""
    if not secret:
        return None
    secret = secret.strip()
    if secret[:7].lower() == "bearer ":
        secret = secret[7:].strip()
    if len(secret) < MIN_HINTED:
        return "****"
    return "…" + secret[-4:]

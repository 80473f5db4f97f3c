"""Key records and the helpers that need no database (so importing them loads no SQLAlchemy)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from .limits import Limits

KEY_PREFIX = "sk-cp-"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def utc(dt: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; they were written in UTC."""
    if dt is None:
        return None
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class KeyRecord:
    id: int
    name: str
    hint: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    models: tuple[str, ...] | None
    limits: Limits
    spent_tokens: int

    def status(self, at: datetime | None = None) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= (at or now_utc()):
            return "expired"
        return "active"

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "key": KEY_PREFIX + "…" + self.hint,
            "status": self.status(),
            "models": list(self.models) if self.models is not None else None,
            "rpm": self.limits.rpm,
            "tpm": self.limits.tpm,
            "max_concurrent": self.limits.concurrency,
            "budget": self.limits.budget,
            "spent_tokens": self.spent_tokens,
            "created_at": self.created_at.isoformat(),
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
        }

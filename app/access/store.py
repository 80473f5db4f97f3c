"""The key store: virtual keys and usage records, with SQLAlchemy (SQLite by default, or PostgreSQL).

Keys are `sk-cp-` + 43 random URL-safe characters (256 bits), shown once at
creation and stored only as their SHA-256 (a slow hash adds nothing for a
random secret this long) plus their last 4 characters for display.
Tables are created on first use; `cot_` prefixes keep them apart from others.

Text that reaches SQL is made storable first: usage records (whose model and key
names come from clients) have control characters and lone surrogates replaced
(PostgreSQL refuses NUL, neither driver encodes a lone surrogate), text cut to
its column and counts clamped to the column's range, so one odd request cannot
poison the writer's batch; a batch the database still refuses is written row by
row and only the refused rows are dropped. Key names are checked at creation.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
import unicodedata
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    case,
    create_engine,
    event,
    func,
    select,
    update,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError

from .keys import KEY_PREFIX, KeyRecord, hash_key, now_utc, utc  # noqa: F401  (re-exported)
from .limits import Limits
from .usage import REPLAYED

log = logging.getLogger("cot_proxy.guard")

metadata = MetaData()

api_keys = Table(
    "cot_api_keys",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False, index=True),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("key_hint", String(8), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True)),
    Column("revoked_at", DateTime(timezone=True)),
    Column("models", Text),
    Column("rpm", Integer),
    Column("tpm", Integer),
    Column("max_concurrent", Integer),
    Column("budget", BigInteger),
    Column("spent_tokens", BigInteger, nullable=False, default=0),
)

usage_records = Table(
    "cot_usage",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("created_at", DateTime(timezone=True), nullable=False, index=True),
    Column("request_id", String(128)),
    Column("key_id", Integer, index=True),
    Column("key_name", String(200)),
    Column("model", String(200)),
    Column("provider", String(200)),
    Column("prompt_tokens", Integer, nullable=False, default=0),
    Column("completion_tokens", Integer, nullable=False, default=0),
    Column("total_tokens", Integer, nullable=False, default=0),
    Column("estimated", Boolean, nullable=False, default=False),
    Column("streamed", Boolean, nullable=False, default=False),
    Column("status", Integer),
    Column("latency_ms", Integer),
)


INT32_MAX = 2_147_483_647
NAME_CHARS = 200
REFUSED_DATA = (DataError, IntegrityError, ValueError, TypeError, OverflowError)
"""The database or its driver refuses a row's data (UnicodeEncodeError is a ValueError), as opposed to
being unreachable (OperationalError: the writer keeps the batch for the next round)."""


def _unstorable(c: str) -> bool:
    return unicodedata.category(c) in ("Cc", "Cs")


def storable_text(value: Any, limit: int | None) -> str | None:
    """Text any backend stores as given: control characters and lone surrogates become U+FFFD, cut to `limit`."""
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    if any(_unstorable(c) for c in text):
        text = "".join("\ufffd" if _unstorable(c) else c for c in text)
    return text[:limit] if limit else text


def _clamp(value: Any, high: int, nullable: bool) -> int | None:
    if value is None:
        return None if nullable else 0
    try:
        n = int(value)
    except (TypeError, ValueError, OverflowError):
        return 0
    return min(max(n, 0), high)


def _usage_row(rec: dict[str, Any]) -> dict[str, Any]:
    """The record as the table can take it (unknown fields dropped)."""
    row: dict[str, Any] = {}
    for col in usage_records.columns:
        if col.name == "id" or col.name not in rec:
            continue
        value = rec[col.name]
        if isinstance(col.type, String):
            value = storable_text(value, col.type.length)
        elif isinstance(col.type, Boolean):
            value = bool(value)
        elif isinstance(col.type, (Integer, BigInteger)) and col.name != "key_id":
            value = _clamp(value, INT32_MAX, bool(col.nullable))
        row[col.name] = value
    return row


def check_name(name: str) -> str:
    """A key's name as given, or ValueError: 1 to 200 characters, no control characters."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError("a key's name must not be empty")
    if len(name) > NAME_CHARS:
        raise ValueError(f"a key's name has at most {NAME_CHARS} characters (got {len(name)})")
    if any(_unstorable(c) for c in name):
        raise ValueError("a key's name must not contain control characters")
    return name


def _record(row: Any) -> KeyRecord:
    m = row._mapping
    models = tuple(json.loads(m["models"])) if m["models"] else None
    return KeyRecord(
        id=m["id"],
        name=m["name"],
        hint=m["key_hint"],
        created_at=utc(m["created_at"]),
        expires_at=utc(m["expires_at"]),
        revoked_at=utc(m["revoked_at"]),
        models=models,
        limits=Limits(rpm=m["rpm"], tpm=m["tpm"], concurrency=m["max_concurrent"], budget=m["budget"]),
        spent_tokens=int(m["spent_tokens"] or 0),
    )


def engine_url(url: str) -> str:
    """`postgresql://` means psycopg 3 (the driver in requirements.txt); SQLite paths get their folder."""
    u = make_url(url)
    if u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+psycopg")
    elif u.get_backend_name() == "sqlite" and u.database and u.database != ":memory:":
        Path(u.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    return u.render_as_string(hide_password=False)


def make_engine(url: str) -> Engine:
    full = engine_url(url)
    if full.startswith("sqlite"):
        engine = create_engine(full, connect_args={"check_same_thread": False, "timeout": 10})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(conn: Any, _record: Any) -> None:
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")  # readers never wait for the usage writer
            cur.execute("PRAGMA busy_timeout=10000")
            cur.close()

        return engine
    return create_engine(full, pool_pre_ping=True, pool_size=5, max_overflow=5)


class KeyStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._ready = False

    def ensure_schema(self) -> None:
        if self._ready:
            return
        for attempt in range(3):  # workers starting together may race to create the tables
            try:
                metadata.create_all(self.engine, checkfirst=True)
                break
            except SQLAlchemyError:
                if attempt == 2:
                    raise
                time.sleep(0.2 * (attempt + 1))
        self._ready = True

    def close(self) -> None:
        self.engine.dispose()

    # -- keys -------------------------------------------------------------

    def create(
        self,
        name: str,
        *,
        models: Sequence[str] | None = None,
        rpm: int | None = None,
        tpm: int | None = None,
        max_concurrent: int | None = None,
        budget: int | None = None,
        expires_at: datetime | None = None,
    ) -> tuple[str, KeyRecord]:
        """A new key: returns the secret (shown once) and its record. ValueError for an unusable name."""
        check_name(name)
        if models and any(not isinstance(m, str) or any(_unstorable(c) for c in m) for m in models):
            raise ValueError("model names and globs must not contain control characters")
        self.ensure_schema()
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        values = {
            "name": name,
            "key_hash": hash_key(secret),
            "key_hint": secret[-4:],
            "created_at": now_utc(),
            "expires_at": expires_at,
            "models": json.dumps(list(models)) if models else None,
            "rpm": rpm or None,
            "tpm": tpm or None,
            "max_concurrent": max_concurrent or None,
            "budget": budget or None,
            "spent_tokens": 0,
        }
        with self.engine.begin() as conn:
            key_id = conn.execute(api_keys.insert().values(**values)).inserted_primary_key[0]
            row = conn.execute(select(api_keys).where(api_keys.c.id == key_id)).one()
        return secret, _record(row)

    def lookup(self, secret: str) -> KeyRecord | None:
        """The record for a presented key, whatever its status; None if unknown."""
        self.ensure_schema()
        with self.engine.connect() as conn:
            row = conn.execute(select(api_keys).where(api_keys.c.key_hash == hash_key(secret))).first()
        return _record(row) if row is not None else None

    def lookup_by_id(self, key_id: int) -> KeyRecord | None:
        self.ensure_schema()
        with self.engine.connect() as conn:
            row = conn.execute(select(api_keys).where(api_keys.c.id == key_id)).first()
        return _record(row) if row is not None else None

    def list(self, *, include_inactive: bool = True) -> list[KeyRecord]:
        self.ensure_schema()
        with self.engine.connect() as conn:
            rows = conn.execute(select(api_keys).order_by(api_keys.c.id)).all()
        records = [_record(r) for r in rows]
        return records if include_inactive else [r for r in records if r.status() == "active"]

    def revoke(self, ident: str) -> list[KeyRecord]:
        """Revoke by id, by name (every active key of that name), or by the full key. Returns those revoked."""
        self.ensure_schema()
        if storable_text(ident, None) != ident:
            return []  # no stored key, name or id has such characters
        active = and_(api_keys.c.revoked_at.is_(None))
        if ident.startswith(KEY_PREFIX):
            cond = api_keys.c.key_hash == hash_key(ident)
        elif ident.isdigit():
            cond = api_keys.c.id == int(ident)
        else:
            cond = api_keys.c.name == ident
        with self.engine.begin() as conn:
            rows = conn.execute(select(api_keys.c.id).where(cond, active)).all()
            ids = [r[0] for r in rows]
            if ids:
                conn.execute(update(api_keys).where(api_keys.c.id.in_(ids)).values(revoked_at=now_utc()))
            out = conn.execute(select(api_keys).where(api_keys.c.id.in_(ids))).all() if ids else []
        return [_record(r) for r in out]

    # -- usage ------------------------------------------------------------

    def add_usage(self, records: Iterable[dict[str, Any]]) -> int:
        """Insert usage records and add their tokens to each key's `spent_tokens`, in one transaction.

        Records are made storable first (`_usage_row`). If the database still refuses the batch's data,
        each record is written on its own and the refused ones are logged and dropped (returns the
        number written); a store that is down raises, and the caller keeps the batch."""
        records = list(records)
        if not records:
            return 0
        self.ensure_schema()
        rows = [_usage_row(r) for r in self._not_yet_stored(records)]
        if not rows:
            return 0
        try:
            self._insert_usage(rows)
            return len(rows)
        except REFUSED_DATA:
            pass
        written = 0
        for row in rows:
            try:
                self._insert_usage([row])
                written += 1
            except REFUSED_DATA as exc:
                log.error(
                    "usage record %s dropped, the database refuses it: %s",
                    row.get("request_id"),
                    type(getattr(exc, "orig", None) or exc).__name__,
                )
        return written

    def _not_yet_stored(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """`records` without the replayed ones (from a dead worker's spool, see usage.py) the table already
        holds, by request id and time: that worker may have died after writing them, before its spool went."""
        replayed = [r for r in records if r.get(REPLAYED)]
        if not replayed:
            return records
        ids = {storable_text(r.get("request_id"), 128) for r in replayed}
        u = usage_records.c
        with self.engine.connect() as conn:
            stored = {
                (rid, utc(at))
                for rid, at in conn.execute(select(u.request_id, u.created_at).where(u.request_id.in_(ids))).all()
            }
        return [
            r
            for r in records
            if not r.get(REPLAYED) or (storable_text(r.get("request_id"), 128), utc(r.get("created_at"))) not in stored
        ]

    def _insert_usage(self, rows: list[dict[str, Any]]) -> None:
        spent: dict[int, int] = {}
        for r in rows:
            if r.get("key_id") is not None:
                spent[r["key_id"]] = spent.get(r["key_id"], 0) + int(r.get("total_tokens") or 0)
        with self.engine.begin() as conn:
            conn.execute(usage_records.insert(), rows)
            for key_id, tokens in spent.items():
                if tokens:
                    conn.execute(
                        update(api_keys)
                        .where(api_keys.c.id == key_id)
                        .values(spent_tokens=api_keys.c.spent_tokens + tokens)
                    )

    def usage(
        self,
        *,
        key: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[dict[str, Any]]:
        """Totals per key and model, most tokens first."""
        self.ensure_schema()
        if key is not None and storable_text(key, NAME_CHARS) != key:
            return []  # stored names never hold such characters (and PostgreSQL cannot compare a NUL)
        u = usage_records.c
        query = select(
            u.key_name,
            u.model,
            func.count().label("requests"),
            func.coalesce(func.sum(u.prompt_tokens), 0).label("prompt_tokens"),
            func.coalesce(func.sum(u.completion_tokens), 0).label("completion_tokens"),
            func.coalesce(func.sum(u.total_tokens), 0).label("total_tokens"),
            func.coalesce(func.sum(case((u.estimated, 1), else_=0)), 0).label("estimated_requests"),
            func.coalesce(func.sum(case((u.status >= 400, 1), else_=0)), 0).label("errors"),
            func.coalesce(func.avg(u.latency_ms), 0).label("avg_latency_ms"),
        ).group_by(u.key_name, u.model)
        if key is not None:
            query = query.where(u.key_name == key)
        if since is not None:
            query = query.where(u.created_at >= since)
        if until is not None:
            query = query.where(u.created_at < until)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        out = [
            {
                "key": r.key_name,
                "model": r.model,
                "requests": int(r.requests),
                "prompt_tokens": int(r.prompt_tokens),
                "completion_tokens": int(r.completion_tokens),
                "total_tokens": int(r.total_tokens),
                "estimated_requests": int(r.estimated_requests),
                "errors": int(r.errors),
                "avg_latency_ms": round(float(r.avg_latency_ms), 1),
            }
            for r in rows
        ]
        out.sort(key=lambda d: (-d["total_tokens"], d["key"] or "", d["model"] or ""))
        return out

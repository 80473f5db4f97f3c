"""`flask --app cot_proxy keys create|list|revoke|usage`: manage virtual keys in the key store.

The store is DATABASE_URL (default sqlite:///data/cot-proxy.db), the same one
the proxy reads with VIRTUAL_KEYS=true. A new key is printed once, alone on
stdout (details go to stderr), so `KEY=$(flask --app cot_proxy keys create …)` works.
"""

from __future__ import annotations

import json
import re
import sys
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import click
from flask import current_app
from flask.cli import AppGroup

from .api import parse_time
from .keys import now_utc

if TYPE_CHECKING:
    from .store import KeyStore

keys = AppGroup("keys", help="Virtual API keys (sk-cp-…) in the key store at DATABASE_URL.")

_DURATION = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _store() -> KeyStore:
    from .store import KeyStore

    return KeyStore(current_app.config["COT"].access.database_url)


def _expiry(value: str | None) -> datetime | None:
    if not value:
        return None
    m = _DURATION.match(value.strip().lower())
    if m:
        return now_utc() + timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2)])
    try:
        dt = parse_time(value, "expires")
    except Exception:
        dt = None
    if dt is None:
        raise click.BadParameter("use a duration (30d, 12h, 90m) or an ISO 8601 time", param_hint="--expires")
    return dt


def _models(values: tuple[str, ...]) -> list[str] | None:
    out = [m.strip() for v in values for m in v.split(",") if m.strip()]
    return out or None


def _limit(value: int | None) -> str:
    return "-" if not value else str(value)


@keys.command("create")
@click.option("--name", required=True, help="Who the key is for (shown in usage reports).")
@click.option("--models", multiple=True, help="Allowed models, globs, comma-separated or repeated ('local/*').")
@click.option("--rpm", type=click.IntRange(min=0), help="Requests per minute.")
@click.option("--tpm", type=click.IntRange(min=0), help="Tokens per minute.")
@click.option(
    "--max-concurrent",
    "--concurrency",
    "max_concurrent",
    type=click.IntRange(min=0),
    help="Requests in flight at once.",
)
@click.option("--budget", type=click.IntRange(min=0), help="Total tokens over the key's life.")
@click.option("--expires", help="Expiry: a duration (30d, 12h) or an ISO 8601 time.")
@click.option("--json", "as_json", is_flag=True, help="Print the key and its record as JSON.")
def create(
    name: str,
    models: tuple[str, ...],
    rpm: int | None,
    tpm: int | None,
    max_concurrent: int | None,
    budget: int | None,
    expires: str | None,
    as_json: bool,
) -> None:
    """Create a key; it is shown once."""
    store = _store()
    try:
        secret, record = store.create(
            name,
            models=_models(models),
            rpm=rpm,
            tpm=tpm,
            max_concurrent=max_concurrent,
            budget=budget,
            expires_at=_expiry(expires),
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps({"key": secret, **record.as_dict()}))
        return
    click.echo(secret)
    click.echo(
        f"created key {record.id} for {name!r}: models={','.join(record.models or ()) or 'any'} "
        f"rpm={_limit(rpm)} tpm={_limit(tpm)} concurrent={_limit(max_concurrent)} budget={_limit(budget)} "
        f"expires={record.expires_at.isoformat() if record.expires_at else 'never'}. "
        "Store it now: it is not shown again.",
        err=True,
    )


@keys.command("list")
@click.option("--all", "show_all", is_flag=True, help="Include revoked and expired keys.")
@click.option("--json", "as_json", is_flag=True)
def list_keys(show_all: bool, as_json: bool) -> None:
    """List keys (never their secrets: the last 4 characters only)."""
    store = _store()
    try:
        records = store.list(include_inactive=show_all)
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in records]))
        return
    header = (
        f"{'ID':>4}  {'NAME':<20} {'KEY':<12} {'STATUS':<8} {'MODELS':<20} {'RPM':>6} {'TPM':>8} "
        f"{'CONC':>5} {'BUDGET':>10} {'SPENT':>10}  EXPIRES"
    )
    click.echo(header)
    for r in records:
        d = r.as_dict()
        click.echo(
            f"{r.id:>4}  {r.name[:20]:<20} {d['key']:<12} {d['status']:<8} "
            f"{','.join(r.models or ('*',))[:20]:<20} {_limit(r.limits.rpm):>6} {_limit(r.limits.tpm):>8} "
            f"{_limit(r.limits.concurrency):>5} {_limit(r.limits.budget):>10} {r.spent_tokens:>10}  "
            f"{r.expires_at.isoformat() if r.expires_at else '-'}"
        )


@keys.command("revoke")
@click.argument("ident")
def revoke(ident: str) -> None:
    """Revoke by id, by name (all active keys of that name) or by the key itself."""
    store = _store()
    try:
        revoked = store.revoke(ident)
    finally:
        store.close()
    if not revoked:
        click.echo(f"no active key matches {ident if not ident.startswith('sk-') else ident[:6] + '…'}", err=True)
        sys.exit(1)
    for r in revoked:
        click.echo(f"revoked key {r.id} ({r.name}, …{r.hint})")


@keys.command("usage")
@click.option("--key", help="Only this key's name.")
@click.option("--since", help="ISO 8601 or Unix seconds.")
@click.option("--until", help="ISO 8601 or Unix seconds.")
@click.option("--json", "as_json", is_flag=True)
def usage(key: str | None, since: str | None, until: str | None, as_json: bool) -> None:
    """Usage totals per key and model."""
    store = _store()
    try:
        rows = store.usage(key=key, since=parse_time(since, "since"), until=parse_time(until, "until"))
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps(rows))
        return
    click.echo(
        f"{'KEY':<20} {'MODEL':<28} {'REQUESTS':>8} {'PROMPT':>10} {'COMPLETION':>10} {'TOTAL':>10} "
        f"{'ESTIMATED':>9} {'ERRORS':>6}"
    )
    for r in rows:
        click.echo(
            f"{(r['key'] or '-')[:20]:<20} {(r['model'] or '-')[:28]:<28} {r['requests']:>8} "
            f"{r['prompt_tokens']:>10} {r['completion_tokens']:>10} {r['total_tokens']:>10} "
            f"{r['estimated_requests']:>9} {r['errors']:>6}"
        )

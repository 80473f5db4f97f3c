"""Log formatting: one JSON object per line, or text for humans; secret masking.

Standard library and orjson only: gunicorn.conf.py loads this in the master so
that Gunicorn's own lines come out in the same format as the app's.

A record's structured fields travel in `extra={"fields": {...}}`: the JSON
formatter puts them at the top level, the text one appends them as key=value.
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any

import orjson

from ..redact import hint

_RESERVED = ("time", "level", "logger", "message", "pid")
_SECRET_KEY = re.compile(
    r"(?i)(api[_-]?key|authorization|secret|password|passwd|credential|access[_-]?token|refresh[_-]?token"
    r"|id[_-]?token|bearer|private[_-]?key|^token$)"
)


def iso_time(epoch: float) -> str:
    """UTC, millisecond precision: `2025-01-31T12:00:00.123Z`."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + f".{int(epoch % 1 * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    """`{"time", "level", "logger", "message", "pid", "request_id"?, ...fields}` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": iso_time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        request_id = getattr(record, "request_id", None)
        if request_id and request_id != "-":
            out["request_id"] = request_id
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                out[key if key not in _RESERVED else "field_" + key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        try:  # orjson: a tenth of json.dumps' time, on every access line
            return orjson.dumps(out, default=str).decode()
        except TypeError:  # an int beyond 64 bits, say
            return json.dumps(out, ensure_ascii=False, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """`time LEVEL [request id] logger: message key=value ...`."""

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None)
        rid = (fields.get("request_id") if isinstance(fields, dict) else None) or getattr(record, "request_id", "-")
        head = f"{iso_time(record.created)} {record.levelname} [{rid}] {record.name}: {record.getMessage()}"
        if isinstance(fields, dict):
            parts = [f"{k}={_text_value(v)}" for k, v in fields.items() if v is not None and k != "request_id"]
            if parts:
                head += " " + " ".join(parts)
        if record.exc_info:
            head += "\n" + self.formatException(record.exc_info)
        return head


def _text_value(value: Any) -> str:
    if isinstance(value, str):
        return (
            value
            if value and not any(c.isspace() or c in '"=' for c in value)
            else json.dumps(value, ensure_ascii=False)
        )
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, default=str, separators=(",", ":"))
    return str(value)


def make_formatter(log_format: str) -> logging.Formatter:
    return TextFormatter() if log_format == "text" else JsonFormatter()


def mask_secrets(obj: Any, depth: int = 0) -> Any:
    """A copy of a decoded JSON body with credential-like string values reduced to `redact.hint`."""
    if depth > 20:
        return "…"
    if isinstance(obj, dict):
        return {
            k: (
                hint(v)
                if isinstance(v, str) and isinstance(k, str) and _SECRET_KEY.search(k)
                else mask_secrets(v, depth + 1)
            )
            for k, v in obj.items()
        }
    if isinstance(obj, list):
        return [mask_secrets(v, depth + 1) for v in obj]
    if isinstance(obj, str) and obj[:7].lower() == "bearer ":
        return "Bearer " + (hint(obj) or "")
    return obj


def truncate_json(obj: Any, limit: int) -> str:
    """`obj` as compact JSON, cut to `limit` characters (with a marker when cut)."""
    text = json.dumps(obj, ensure_ascii=False, default=str, separators=(",", ":"))
    if len(text) <= limit:
        return text
    return text[:limit] + f"…[{len(text) - limit} more]"

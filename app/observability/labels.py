"""Bounded label values: a client's model name becomes a metric label only if it is known.

Known: the models configured (LLM_PARAMS groups, the routing file's aliases and
provider model lists, METRICS_MODELS), plus ids learned from successful
upstream `/v1/models` answers (at most `MAX_LEARNED`). Anything else is `other`,
so random model names can never grow the number of time series.

Under Gunicorn a learned list is shared with the other workers through a small
JSON file in `PROMETHEUS_MULTIPROC_DIR`, re-read (at most once a second) when
an unknown name shows up.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterable
from typing import Any

from .exposition import multiprocess_dir

log = logging.getLogger("cot_proxy.observability")

OTHER = "other"
NONE = "none"
MAX_LEARNED = 500
MAX_LENGTH = 200
SHARED_FILE = "cot_proxy_models.json"
_SAFE = re.compile(r"^[A-Za-z0-9_.:@/+=-]{1,128}$")


def configured_models(config: Any) -> set[str]:
    """Model names the configuration names (read defensively: the routing settings are optional)."""
    names: set[str] = set()
    table = getattr(config, "llm_params", None)
    names.update(n for n in getattr(table, "names", ()) if n not in ("default", "*"))
    settings = getattr(config, "observability", None)
    names.update(getattr(settings, "metrics_models", ()))
    try:
        routing = getattr(config, "routing_settings", None)
    except Exception:  # a half-built config: routing labels are a nicety
        routing = None
    if routing is not None:
        names.update(getattr(routing, "models", {}) or {})
        for pname, spec in (getattr(routing, "providers", {}) or {}).items():
            for model in getattr(spec, "models", ()) or ():
                names.update((model, f"{pname}/{model}"))
    return {n for n in names if isinstance(n, str) and 0 < len(n) <= MAX_LENGTH}


def label_value(text: str | None, fallback: str = OTHER) -> str:
    """A name from configuration, made safe for a label (configured names are trusted but not unbounded)."""
    if not text:
        return NONE
    return text if _SAFE.match(text) else fallback


class ModelLabels:
    def __init__(self, configured: Iterable[str], shared_dir: str | None = None) -> None:
        self.configured = frozenset(configured)
        self._learned: set[str] = set()
        self._lock = threading.Lock()
        self._path = os.path.join(shared_dir, SHARED_FILE) if shared_dir else None
        self._seen_mtime: float | None = None
        self._checked_at = 0.0

    @classmethod
    def for_config(cls, config: Any) -> ModelLabels:
        return cls(configured_models(config), multiprocess_dir())

    def label(self, model: str | None) -> str:
        if model is None:
            return NONE
        if model in self.configured or model in self._learned:
            return model
        if self._path is not None and self._reload():
            if model in self._learned:
                return model
        return OTHER

    def learn(self, models: Iterable[Any]) -> None:
        """Add model ids (from an upstream's /v1/models answer); over the cap, the rest are ignored."""
        fresh = [
            m
            for m in models
            if isinstance(m, str) and 0 < len(m) <= MAX_LENGTH and m not in self.configured and m not in self._learned
        ]
        if not fresh:
            return
        with self._lock:
            room = MAX_LEARNED - len(self._learned)
            if room <= 0:
                return
            self._learned.update(fresh[:room])
            learned = sorted(self._learned)
        if self._path is not None:
            self._share(learned)

    # -- sharing between workers ----------------------------------------------

    def _share(self, learned: list[str]) -> None:
        assert self._path is not None
        try:
            merged = set(learned) | set(self._read())
            tmp = f"{self._path}.{os.getpid()}.tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(sorted(merged)[:MAX_LEARNED], f)
            os.replace(tmp, self._path)
        except OSError as exc:
            log.warning("cannot share learned model names: %s", exc)

    def _read(self) -> list[str]:
        assert self._path is not None
        try:
            with open(self._path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError):
            return []
        return [m for m in data if isinstance(m, str) and 0 < len(m) <= MAX_LENGTH] if isinstance(data, list) else []

    def _reload(self) -> bool:
        """Re-read the shared file if it changed (checked at most once a second)."""
        now = time.monotonic()
        if now - self._checked_at < 1.0:
            return False
        self._checked_at = now
        try:
            mtime = os.stat(self._path).st_mtime  # type: ignore[arg-type]
        except OSError:
            return False
        if mtime == self._seen_mtime:
            return False
        self._seen_mtime = mtime
        names = self._read()
        with self._lock:
            room = MAX_LEARNED - len(self._learned)
            self._learned.update([n for n in names if n not in self._learned][: max(room, 0)])
        return True

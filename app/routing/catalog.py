"""One model list: every provider's models, fetched in the background, served from memory.

A slow or dead provider never slows `GET /v1/models`: its models stay listed
from the last good fetch. Background work also runs the active health probes.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import requests

from .providers import Provider
from .shared import SYNC_SECONDS, SharedEjections

log = logging.getLogger("cot_proxy.routing")
FETCH_TIMEOUT = 5.0
USER_AGENT = "cot-proxy-background"
"""Marks the proxy's own model-list fetches and health probes."""


class Catalog:
    def __init__(
        self,
        providers: dict[str, Provider],
        aliases: list[str],
        refresh_seconds: float,
        shared: SharedEjections | None = None,
    ) -> None:
        self.providers = providers
        self.shared = shared
        self.aliases = aliases
        self.refresh_seconds = refresh_seconds
        self.models: dict[str, list[str]] = {name: list(p.spec.models) for name, p in providers.items()}
        """Provider name -> its model ids (unprefixed), from the last good fetch."""
        self._fetching: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._session = requests.Session()
        self._session.trust_env = False
        self._session.headers["User-Agent"] = USER_AGENT

    # -- queries ------------------------------------------------------------

    def owner_of(self, model_id: str) -> str | None:
        """The provider that lists exactly `model_id`, if one does."""
        for name, ids in self.models.items():
            if model_id in ids:
                return name
        return None

    def listing(self, extra: list[str] = ()) -> list[dict[str, Any]]:
        """OpenAI list entries: `provider/id` for every listed model, then aliases."""
        entries: dict[str, dict[str, Any]] = {}
        for name, ids in self.models.items():
            for model_id in ids:
                full = f"{name}/{model_id}"
                entries[full] = {"id": full, "object": "model", "created": 0, "owned_by": name}
        for alias in [*self.aliases, *extra]:
            entries.setdefault(alias, {"id": alias, "object": "model", "created": 0, "owned_by": "cot-proxy"})
        return list(entries.values())

    # -- background ---------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="cot-proxy-catalog", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        next_models = 0.0
        next_probe: dict[int, float] = {}
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_models:
                self.refresh()
                next_models = now + self.refresh_seconds
            wait = next_models - now
            if self.shared is not None:
                self.shared.sync(b for p in self.providers.values() for b in p.backends)
                wait = min(wait, SYNC_SECONDS)
            for provider in self.providers.values():
                check = provider.spec.health_check
                if check is None:
                    continue
                for backend in provider.backends:
                    due = next_probe.get(id(backend), 0.0)
                    if now >= due:
                        self.probe(provider, backend)
                        due = now + check.interval_seconds
                        next_probe[id(backend)] = due
                    wait = min(wait, due - now)
            self._stop.wait(max(wait, 0.05))

    def refresh(self) -> None:
        """Fetch every provider's list, each in its own thread: a slow one delays no other."""
        for name, provider in self.providers.items():
            if name in self._fetching:
                continue
            self._fetching.add(name)
            threading.Thread(target=self._refresh_one, args=(name, provider), daemon=True).start()

    def _refresh_one(self, name: str, provider: Provider) -> None:
        try:
            ids = self.fetch(provider)
            if ids is not None:
                self.models[name] = sorted(set(ids) | set(provider.spec.models))
        finally:
            self._fetching.discard(name)

    def fetch(self, provider: Provider) -> list[str] | None:
        for backend in provider.order_for_listing():
            url = provider.models_url(backend)
            if url is None:
                return None
            try:
                resp = self._session.get(url, headers=_auth(backend.target.api_key), timeout=FETCH_TIMEOUT)
                if resp.status_code == 200:
                    return provider.parse_models(resp.json())
                log.warning("model list of %s: HTTP %s", provider.name, resp.status_code)
            except (requests.RequestException, ValueError) as exc:
                log.warning("model list of %s failed: %s", provider.name, type(exc).__name__)
        return None

    def probe(self, provider: Provider, backend: Any) -> None:
        url = provider.health_url(backend)
        if url is None:
            return
        try:
            resp = self._session.get(url, headers=_auth(backend.target.api_key), timeout=FETCH_TIMEOUT)
            up = resp.status_code < 500
            resp.close()
        except requests.RequestException:
            up = False
        if up != backend.probe_up:
            log.info("backend %s of %s is %s", backend.target.origin, provider.name, "up" if up else "down")
        backend.probe_up = up


def _auth(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}

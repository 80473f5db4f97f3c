"""Configuration, read once at start from the environment (and `.env`).

`Config.from_env()` is the only place that reads variables; everything else
receives the typed object. A bad value raises `ConfigError` with one line
naming the variable, so start-up stops with a message a person can act on.

Keep this module, and what it imports, standard-library only (plus the lazy
`dotenv` import): gunicorn.conf.py loads it in the master to validate.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from .access.settings import AccessSettings
from .bounds import Bounds
from .envparse import ConfigError, boolean, choice, number, text, url
from .listen import ListenAddressError, join_address, listen_address
from .livepeer.settings import LivepeerSettings
from .model_params import THINK_MODES, ModelParams, ModelTable, ParamsError, PrefillHold, parse_llm_params
from .observability.settings import ObservabilitySettings
from .routing.settings import RoutingSettings, single_provider
from .routing.settings import load as load_routing
from .translate.settings import StoreBounds

TRANSPORTS = ("auto", "gevent", "requests")
"""UPSTREAM_TRANSPORT (app/upstream.py `pick_transport`)."""

REASONING_FIELDS = ("reasoning_content", "reasoning", "both")


def api_base(target: str) -> str:
    """`TARGET_BASE_URL` as the API prefix `/v1/<rest>` maps under, ending in `/`.

    Both conventions work: a URL with a path is the API prefix (`https://api.openai.com/v1/`,
    `http://h/tenant-a/v1`), kept as given; a URL with no path (or only `/`) is a server root, as
    cot_proxy's compose default `http://your-model-server:8080/` (which keeps the client's `/v1/...`
    under it) and `BACKEND_URL`: `/v1/<rest>` goes to `<root>/v1/<rest>`. An API served at a server's
    root without `/v1` is a config-file provider (`base_url` there is always the prefix)."""
    parts = urlsplit(target)
    if not parts.path.strip("/") and not parts.query and not parts.fragment:
        return target.rstrip("/") + "/v1/"
    return target.rstrip("/") + "/"


def _llm_params(raw: str | None, think_tag: str, think_end_tag: str) -> ModelTable:
    """Parse LLM_PARAMS; also refuse equal start and end tags, which could never pair up."""
    try:
        table = parse_llm_params(raw)
    except ParamsError as exc:
        raise ConfigError(f"LLM_PARAMS: {exc}") from None
    if think_tag == think_end_tag:
        raise ConfigError(f"THINK_END_TAG={think_end_tag!r}: must differ from THINK_TAG")
    for group in table.groups():
        if (group.think_start or think_tag) == (group.think_end or think_end_tag):
            raise ConfigError(f"LLM_PARAMS: model={group.name}: think_tag_start and think_tag_end are equal")
    return table


def with_model_specs(table: ModelTable, routing: RoutingSettings) -> ModelTable:
    """The config file's per-model `params`/`think_mode`, with LLM_PARAMS groups on top."""
    if not routing.models:
        return table
    by_name = dict(table.by_name)
    for name, spec in routing.models.items():
        if not (spec.params or spec.think_mode or spec.think_tag_start or spec.think_tag_end):
            continue
        base = ModelParams(
            name=name,
            overrides=dict(spec.params),
            think_mode=spec.think_mode,
            think_start=spec.think_tag_start,
            think_end=spec.think_tag_end,
        )
        top = by_name.get(name)
        if top is not None:
            base = ModelParams(
                name=name,
                overrides={**base.overrides, **top.overrides},
                defaults=top.defaults,
                upstream_model=top.upstream_model,
                append_text=top.append_text,
                think_mode=top.think_mode or base.think_mode,
                think_start=top.think_start or base.think_start,
                think_end=top.think_end or base.think_end,
                think_prefilled=top.think_prefilled,
            )
        by_name[name] = base
    return ModelTable(by_name=by_name, fallback=table.fallback)


@dataclass(frozen=True)
class Config:
    """Everything the app needs to know, typed. Build with `from_env()`."""

    target_base_url: str | None = None
    """Upstream base including its API prefix, always ending in `/`; None = echo mode.
    From `TARGET_BASE_URL` by `api_base` (a bare server root gets `/v1/`), or `BACKEND_URL` + `/v1/`."""
    upstream_api_key: str | None = field(default=None, repr=False)
    debug: bool = False
    host: str = "0.0.0.0"
    port: int = 5000
    connect_timeout: float = 10.0
    read_timeout: float = 600.0
    upstream_transport: str = "auto"
    """UPSTREAM_TRANSPORT: `auto`, `gevent` or `requests` (app/upstream.py `pick_transport`)."""
    bounds: Bounds = field(default_factory=Bounds)
    """Size and time limits on request and response bodies (app/bounds.py)."""
    health_cache_seconds: float = 2.0
    livepeer: LivepeerSettings | None = None
    """Livepeer gateway routes (`GATEWAY_URL` set), else None."""
    think_mode: str = "strip"
    """`strip`, `separate` or `keep` reasoning, unless the model's LLM_PARAMS group says otherwise."""
    think_tag: str = "<think>"
    think_end_tag: str = "</think>"
    reasoning_field: str = "reasoning_content"
    """Where `separate` puts reasoning: `reasoning_content`, `reasoning` or `both`."""
    llm_params: ModelTable = field(default_factory=ModelTable)
    """Per-model overrides and think settings from `LLM_PARAMS` (on top of the config file's `models`)."""
    routing: RoutingSettings | None = None
    """Providers and aliases (config file + shorthands); None = just `target_base_url`."""
    access: AccessSettings = field(default_factory=AccessSettings)
    """Authentication, limits, usage accounting and strict checks (app/access/settings.py)."""
    observability: ObservabilitySettings = field(default_factory=ObservabilitySettings)
    """Logs, metrics, completion sinks and tracing (app/observability/settings.py)."""
    responses_store: StoreBounds = field(default_factory=StoreBounds)
    """RESPONSES_STORE_*: what the Responses store keeps (app/translate/store.py)."""
    prefill_hold: PrefillHold = field(default_factory=PrefillHold)
    """THINK_PREFILL_HOLD_*: the think step's hold for models not yet known to pre-fill `<think>`."""

    @property
    def bind(self) -> str:
        """Gunicorn's `bind` for `host` and `port`."""
        return join_address(self.host, self.port)

    @property
    def echo_mode(self) -> bool:
        """Nothing to relay to: no provider and no Livepeer gateway."""
        return not self.routing_settings.providers and self.livepeer is None

    @property
    def routing_settings(self) -> RoutingSettings:
        if self.routing is not None:
            return self.routing
        return single_provider(self.target_base_url, self.upstream_api_key, self.connect_timeout, self.read_timeout)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        """Read the environment (loading `.env` first when reading the real one)."""
        if env is None:
            from dotenv import load_dotenv

            load_dotenv(override=False)
            env = os.environ
        target = url(env, "TARGET_BASE_URL")
        backend = url(env, "BACKEND_URL")
        if target is not None:
            base = api_base(target)
        elif backend is not None:
            base = backend.rstrip("/") + "/v1/"
        else:
            base = None
        # Every settings module raises envparse.ConfigError (or a subclass) naming the variable.
        livepeer = LivepeerSettings.from_env(env)
        try:  # app/listen.py: the rule Gunicorn's bind and the Docker HEALTHCHECK use too
            host, port = listen_address(env)
        except ListenAddressError as exc:
            raise ConfigError(str(exc)) from None
        think_tag, think_end_tag = text(env, "THINK_TAG") or "<think>", text(env, "THINK_END_TAG") or "</think>"
        connect_timeout = number(env, "CONNECT_TIMEOUT_SECONDS", 10.0)
        read_timeout = number(env, "REQUEST_TIMEOUT_SECONDS", 600.0, aliases=("API_REQUEST_TIMEOUT",))
        api_key = text(env, "UPSTREAM_API_KEY")
        routing = load_routing(
            env,
            target_base_url=base,
            upstream_api_key=api_key,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
        )
        access = AccessSettings.from_env(env)
        observability = ObservabilitySettings.from_env(env)
        llm_params = with_model_specs(_llm_params(text(env, "LLM_PARAMS"), think_tag, think_end_tag), routing)
        return cls(
            target_base_url=base,
            think_mode=choice(env, "THINK_MODE", THINK_MODES, "strip"),
            think_tag=think_tag,
            think_end_tag=think_end_tag,
            reasoning_field=choice(env, "REASONING_FIELD", REASONING_FIELDS, "reasoning_content"),
            llm_params=llm_params,
            routing=routing,
            livepeer=livepeer,
            upstream_api_key=api_key,
            debug=boolean(env, "DEBUG", False),
            host=host,
            port=port,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            upstream_transport=choice(env, "UPSTREAM_TRANSPORT", TRANSPORTS, "auto"),
            bounds=Bounds.from_env(env),
            access=access,
            observability=observability,
            responses_store=StoreBounds.from_env(env),
            prefill_hold=PrefillHold.from_env(env),
        )

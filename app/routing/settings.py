"""Routing configuration: providers, backends and model aliases, from YAML and the environment.

`COT_PROXY_CONFIG` names a YAML file (default `./config.yaml` when it exists).
`${VAR}` and `${VAR:-default}` in any string come from the environment. Every
error names the key path (`providers.openai.base_url: not a URL`). The
environment shorthands become providers too: `TARGET_BASE_URL`/`BACKEND_URL`
-> `default`, `OLLAMA_BASE_URL` -> `ollama`.

Loaded by app/config.py in the Gunicorn master: standard library and PyYAML only.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

from ..envparse import ConfigError, integer, text
from ..model_params import THINK_MODES

PROVIDER_TYPES = ("openai", "ollama", "livepeer")
BALANCES = ("cache_aware", "round_robin", "least_busy", "prefix_affinity")
API_SWITCHES = {"responses": "RESPONSES_API", "messages": "MESSAGES_API"}
"""APIs served over chat completions when a provider does not speak them: provider key -> single-target variable."""
API_MODES = ("passthrough", "translate", "auto")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class RoutingConfigError(ConfigError):
    """The routing configuration is invalid; the message starts with the key path."""


@dataclass(frozen=True)
class BackendSpec:
    base_url: str
    """Ends in `/`; `/v1/<rest>` maps under it (Ollama: its `/v1/`)."""
    weight: int = 1
    api_key: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class HealthCheckSpec:
    path: str = "/models"
    interval_seconds: float = 15.0


@dataclass(frozen=True)
class ProviderSpec:
    name: str
    type: str = "openai"
    backends: tuple[BackendSpec, ...] = ()
    balance: str = "round_robin"
    api_key: str | None = field(default=None, repr=False)
    timeout_seconds: float | None = None
    connect_timeout_seconds: float | None = None
    retries: int = 1
    health_check: HealthCheckSpec | None = None
    failure_threshold: int = 3
    """Consecutive failures (connect error, 5xx) that take a backend out."""
    cooldown_seconds: float = 30.0
    affinity_prefix_chars: int = 1024
    models: tuple[str, ...] = ()
    """Models to list when the provider has no list endpoint (optional)."""
    apis: Mapping[str, str] = field(default_factory=dict)
    """Per API in `API_SWITCHES`: `passthrough`, `translate` (over chat completions) or `auto` (the default)."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    route: tuple[str, ...] = ()
    """Fallback chain of `provider/model` entries."""
    provider: str | None = None
    upstream_model: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    think_mode: str | None = None
    think_tag_start: str | None = None
    think_tag_end: str | None = None
    think_prefilled: bool | None = None
    """`think_prefilled: true|false`; None = `auto` (learned from answers, the default)."""


@dataclass(frozen=True)
class RoutingSettings:
    providers: dict[str, ProviderSpec] = field(default_factory=dict)
    models: dict[str, ModelSpec] = field(default_factory=dict)
    default_provider: str | None = None
    models_refresh_seconds: float = 60.0
    source: str | None = None
    """The YAML file read, if any."""

    @property
    def transparent(self) -> bool:
        """One provider from the environment and no file: a pure drop-in relay
        (model names and /v1/models pass through untouched)."""
        return self.source is None and len(self.providers) <= 1


# -- reading -------------------------------------------------------------------


def load(
    env: Mapping[str, str],
    *,
    target_base_url: str | None,
    upstream_api_key: str | None,
    connect_timeout: float,
    read_timeout: float,
) -> RoutingSettings:
    """Everything routing needs: the YAML file (if any) plus environment shorthands."""
    path = text(env, "COT_PROXY_CONFIG")
    if path is None and os.path.exists("config.yaml"):
        path = "config.yaml"
    raw: dict[str, Any] = {}
    if path is not None:
        raw = _read_yaml(path)
    raw = _substitute(raw, env, "")
    _only(raw, "", {"providers", "models", "default_provider", "models_refresh_seconds"})
    providers = {name: _provider(name, spec) for name, spec in _mapping(raw.get("providers") or {}, "providers")}
    # Environment shorthands (the file wins on a name clash).
    retries = integer(env, "UPSTREAM_RETRIES", 0, low=0)
    env_apis = _api_modes({key: text(env, var) for key, var in API_SWITCHES.items()}, "", env_names=True)
    if target_base_url and "default" not in providers:
        providers["default"] = replace(
            _default_provider(target_base_url, upstream_api_key, connect_timeout, read_timeout, retries), apis=env_apis
        )
    ollama = text(env, "OLLAMA_BASE_URL")
    if ollama and "ollama" not in providers:
        _check_url(ollama, "OLLAMA_BASE_URL")
        providers["ollama"] = ProviderSpec(
            "ollama",
            type="ollama",
            backends=(BackendSpec(ollama.rstrip("/") + "/v1/"),),
            timeout_seconds=read_timeout,
            connect_timeout_seconds=connect_timeout,
            retries=retries,
        )
    models = {name: _model(name, spec, providers) for name, spec in _mapping(raw.get("models") or {}, "models")}
    default = raw.get("default_provider") or text(env, "DEFAULT_PROVIDER") or text(env, "DEFAULT_BACKEND")
    if default is not None and default not in providers:
        raise RoutingConfigError(f"default_provider: unknown provider {default!r}")
    if default is None:
        default = "default" if "default" in providers else next(iter(providers), None)
    refresh = _number(raw.get("models_refresh_seconds", 60), "models_refresh_seconds", minimum=1)
    return RoutingSettings(providers, models, default, refresh, path)


def _default_provider(
    url: str, api_key: str | None, connect_timeout: float, read_timeout: float, retries: int = 0
) -> ProviderSpec:
    return ProviderSpec(
        "default",
        backends=(BackendSpec(url),),
        api_key=api_key,
        timeout_seconds=read_timeout,
        connect_timeout_seconds=connect_timeout,
        retries=retries,
    )


def single_provider(
    url: str | None, api_key: str | None, connect_timeout: float, read_timeout: float
) -> RoutingSettings:
    """The routing of a plain `TARGET_BASE_URL` setup: one transparent provider (or none)."""
    if url is None:
        return RoutingSettings()
    return RoutingSettings(
        {"default": _default_provider(url, api_key, connect_timeout, read_timeout)}, default_provider="default"
    )


def _read_yaml(path: str) -> dict[str, Any]:
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
    except OSError as exc:
        raise RoutingConfigError(f"COT_PROXY_CONFIG={path!r}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise RoutingConfigError(f"COT_PROXY_CONFIG={path!r}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise RoutingConfigError(f"COT_PROXY_CONFIG={path!r}: the top level must be a mapping")
    return data


def _substitute(value: Any, env: Mapping[str, str], where: str) -> Any:
    """Replace `${VAR}` / `${VAR:-default}` in every string."""
    if isinstance(value, str):

        def one(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env and env[name] != "":
                return env[name]
            if default is not None:
                return default
            raise RoutingConfigError(f"{where or '(top level)'}: ${{{name}}} is not set and has no default")

        return _VAR.sub(one, value)
    if isinstance(value, dict):
        return {k: _substitute(v, env, _join(where, str(k))) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, env, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def _provider(name: str, spec: Any) -> ProviderSpec:
    where = f"providers.{name}"
    if not isinstance(spec, dict):
        raise RoutingConfigError(f"{where}: must be a mapping")
    _only(
        spec,
        where,
        {
            "type",
            "base_url",
            "backends",
            "balance",
            "api_key",
            "timeout_seconds",
            "connect_timeout_seconds",
            "retries",
            "health_check",
            "failure_threshold",
            "cooldown_seconds",
            "affinity_prefix_chars",
            "models",
            "weight",
            *API_SWITCHES,
        },
    )
    kind = spec.get("type", "openai")
    if kind not in PROVIDER_TYPES:
        raise RoutingConfigError(f"{where}.type: must be one of {', '.join(PROVIDER_TYPES)} (got {kind!r})")
    if "base_url" in spec and "backends" in spec:
        raise RoutingConfigError(f"{where}: give base_url or backends, not both")
    items = spec.get("backends") if "backends" in spec else [{"base_url": spec.get("base_url")}]
    if not isinstance(items, list) or not items:
        raise RoutingConfigError(f"{where}.backends: must be a non-empty list")
    backends = tuple(
        _backend(kind, b, f"{where}.backends[{i}]" if "backends" in spec else where) for i, b in enumerate(items)
    )
    balance = spec.get("balance", "cache_aware" if len(backends) > 1 else "round_robin")
    if balance not in BALANCES:
        raise RoutingConfigError(f"{where}.balance: must be one of {', '.join(BALANCES)} (got {balance!r})")
    health = spec.get("health_check")
    health_spec = None
    if health is not None:
        if not isinstance(health, dict):
            raise RoutingConfigError(f"{where}.health_check: must be a mapping")
        _only(health, f"{where}.health_check", {"path", "interval_seconds"})
        health_spec = HealthCheckSpec(
            path=str(health.get("path", "/models")),
            interval_seconds=_number(
                health.get("interval_seconds", 15), f"{where}.health_check.interval_seconds", minimum=0.1
            ),
        )
    models = spec.get("models", [])
    if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
        raise RoutingConfigError(f"{where}.models: must be a list of model names")
    return ProviderSpec(
        name=name,
        type=kind,
        backends=backends,
        balance=balance,
        api_key=_opt_str(spec, "api_key", where),
        timeout_seconds=_opt_number(spec, "timeout_seconds", where),
        connect_timeout_seconds=_opt_number(spec, "connect_timeout_seconds", where),
        retries=int(_number(spec.get("retries", 1), f"{where}.retries", minimum=0, integer=True)),
        health_check=health_spec,
        failure_threshold=int(
            _number(spec.get("failure_threshold", 3), f"{where}.failure_threshold", minimum=1, integer=True)
        ),
        cooldown_seconds=_number(spec.get("cooldown_seconds", 30), f"{where}.cooldown_seconds", minimum=0),
        affinity_prefix_chars=int(
            _number(spec.get("affinity_prefix_chars", 1024), f"{where}.affinity_prefix_chars", minimum=1, integer=True)
        ),
        models=tuple(models),
        apis=_api_modes(spec, where),
    )


def _api_modes(spec: Mapping[str, Any], where: str, *, env_names: bool = False) -> dict[str, str]:
    """The `API_SWITCHES` a provider (or the single-target environment) sets; unset ones are `auto`."""
    out = {}
    for key, var in API_SWITCHES.items():
        value = spec.get(key)
        if value is None:
            continue
        if value not in API_MODES:
            name = var if env_names else _join(where, key)
            raise RoutingConfigError(f"{name}: must be one of {', '.join(API_MODES)} (got {value!r})")
        out[key] = value
    return out


def _backend(kind: str, spec: Any, where: str) -> BackendSpec:
    if not isinstance(spec, dict):
        raise RoutingConfigError(f"{where}: must be a mapping with base_url")
    _only(spec, where, {"base_url", "weight", "api_key"})
    url = spec.get("base_url")
    if not isinstance(url, str):
        raise RoutingConfigError(f"{where}.base_url: required")
    _check_url(url, f"{where}.base_url")
    base = url.rstrip("/") + "/"
    if kind == "ollama" and not base.endswith("/v1/"):
        base += "v1/"  # Ollama's OpenAI-compatible API lives under /v1
    weight = int(_number(spec.get("weight", 1), f"{where}.weight", minimum=1, integer=True))
    return BackendSpec(base, weight, _opt_str(spec, "api_key", where))


def _model(name: str, spec: Any, providers: dict[str, ProviderSpec]) -> ModelSpec:
    where = f"models.{name}"
    if not isinstance(spec, dict):
        raise RoutingConfigError(f"{where}: must be a mapping")
    _only(
        spec,
        where,
        {
            "route",
            "provider",
            "upstream_model",
            "params",
            "think_mode",
            "think_tag_start",
            "think_tag_end",
            "think_prefilled",
        },
    )
    route = spec.get("route", [])
    if not isinstance(route, list) or not all(isinstance(r, str) and "/" in r for r in route):
        raise RoutingConfigError(f"{where}.route: must be a list of 'provider/model' entries")
    for i, entry in enumerate(route):
        if entry.split("/", 1)[0] not in providers:
            raise RoutingConfigError(f"{where}.route[{i}]: unknown provider in {entry!r}")
    provider = spec.get("provider")
    if provider is not None and provider not in providers:
        raise RoutingConfigError(f"{where}.provider: unknown provider {provider!r}")
    if route and provider:
        raise RoutingConfigError(f"{where}: give route or provider, not both")
    params = spec.get("params", {})
    if not isinstance(params, dict):
        raise RoutingConfigError(f"{where}.params: must be a mapping")
    think_mode = spec.get("think_mode")
    if think_mode is not None and think_mode not in THINK_MODES:
        raise RoutingConfigError(f"{where}.think_mode: must be {', '.join(THINK_MODES)}")
    return ModelSpec(
        name=name,
        route=tuple(route),
        provider=provider,
        upstream_model=_opt_str(spec, "upstream_model", where),
        params=dict(params),
        think_mode=think_mode,
        think_tag_start=_opt_str(spec, "think_tag_start", where),
        think_tag_end=_opt_str(spec, "think_tag_end", where),
        think_prefilled=_prefilled(spec.get("think_prefilled"), f"{where}.think_prefilled"),
    )


def _prefilled(value: Any, where: str) -> bool | None:
    """`think_prefilled`: true, false, or auto (None, the default: learned from the model's answers)."""
    if value is None or value == "auto":
        return None
    if isinstance(value, bool):
        return value
    raise RoutingConfigError(f"{where}: must be auto, true or false")


# -- small checks --------------------------------------------------------------


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _only(spec: dict[str, Any], where: str, allowed: set[str]) -> None:
    for key in spec:
        if key not in allowed:
            raise RoutingConfigError(f"{_join(where, str(key))}: unknown key")


def _mapping(value: Any, where: str) -> list[tuple[str, Any]]:
    if not isinstance(value, dict):
        raise RoutingConfigError(f"{where}: must be a mapping")
    for key in value:
        if not isinstance(key, str) or not key:
            raise RoutingConfigError(f"{where}: names must be non-empty strings")
    return list(value.items())


def _check_url(url: str, where: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise RoutingConfigError(f"{where}: not a URL ({url!r})")


def _number(value: Any, where: str, *, minimum: float, integer: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise RoutingConfigError(f"{where}: must be {'an integer' if integer else 'a number'}")
    if value < minimum:
        raise RoutingConfigError(f"{where}: must be at least {minimum:g}")
    return value


def _opt_number(spec: dict[str, Any], key: str, where: str) -> float | None:
    return None if spec.get(key) is None else _number(spec[key], f"{where}.{key}", minimum=0.001)


def _opt_str(spec: dict[str, Any], key: str, where: str) -> str | None:
    value = spec.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise RoutingConfigError(f"{where}.{key}: must be a string")
    return value

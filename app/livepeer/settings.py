"""Livepeer gateway settings from the environment (standard library only).

The variable names are those of the Livepeer BYOC gateway proxy; an empty
variable counts as unset, as there.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ..envparse import ConfigError, integer, items, text
from ..listen import ListenAddressError
from ..listen import listen_address as _listen_address

STATUS_TIMEOUT_SECONDS = 30


class LivepeerConfigError(ConfigError):
    """A Livepeer variable is malformed; the message names it."""


@dataclass(frozen=True)
class Capability:
    """One gateway route: which capability runs it and how long it may take."""

    name: str
    timeout_seconds: int


# path under /v1/ -> (capability variable, default, timeout variable, default timeout)
ROUTES: dict[str, tuple[str, str, str | None, int]] = {
    "chat/completions": (
        "CHAT_COMPLETIONS_CAPABILITY",
        "openai-chat-completions",
        "CHAT_COMPLETIONS_TIMEOUT_SECONDS",
        120,
    ),
    "images/generations": (
        "IMAGE_GENERATION_CAPABILITY",
        "openai-image-generation",
        "IMAGE_GENERATION_TIMEOUT_SECONDS",
        120,
    ),
    "embeddings": ("TEXT_EMBEDDINGS_CAPABILITY", "openai-text-embeddings", "TEXT_EMBEDDINGS_TIMEOUT_SECONDS", 30),
    "rerank": ("RERANK_CAPABILITY", "cohere-rerank", "RERANK_TIMEOUT_SECONDS", 30),
    "video/pipeline/generations": (
        "VIDEO_PIPELINE_GENERATION_CAPABILITY",
        "video-pipeline-generation",
        "VIDEO_PIPELINE_GENERATION_TIMEOUT_SECONDS",
        900,
    ),
    "video/pipeline/generations/status": (
        "VIDEO_PIPELINE_GENERATION_CAPABILITY",
        "video-pipeline-generation",
        None,
        STATUS_TIMEOUT_SECONDS,
    ),
    # The reference gateway proxy's code registers these names; accepted as aliases.
    "video/generations": ("VIDEO_GENERATION_CAPABILITY", "video-generation", "VIDEO_GENERATION_TIMEOUT_SECONDS", 900),
    "video/generations/status": ("VIDEO_GENERATION_CAPABILITY", "video-generation", None, STATUS_TIMEOUT_SECONDS),
}


def _timeout(env: Mapping[str, str], name: str | None, default: int) -> int:
    return default if name is None else integer(env, name, default, low=0)


@dataclass(frozen=True)
class LivepeerSettings:
    gateway_url: str
    routes: dict[str, Capability] = field(default_factory=dict)
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> LivepeerSettings | None:
        """None when `GATEWAY_URL` is unset: no Livepeer routing."""
        url = text(env, "GATEWAY_URL")
        if url is None:
            return None
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise LivepeerConfigError(f"GATEWAY_URL={url!r}: not an http(s) URL")
        routes = {
            path: Capability(text(env, cap_var) or cap_default, _timeout(env, timeout_var, timeout_default))
            for path, (cap_var, cap_default, timeout_var, timeout_default) in ROUTES.items()
        }
        return cls(
            gateway_url=url.rstrip("/"),
            routes=routes,
            include=items(env, "LIVEPEER_ORCHESTRATORS_INCLUDE"),
            exclude=items(env, "LIVEPEER_ORCHESTRATORS_EXCLUDE"),
        )

    def header(self, capability: Capability) -> str:
        """The `Livepeer` header: padded base64 of JSON whose `request` and
        `parameters` are themselves JSON strings (keys sorted, compact, as Go writes them)."""
        compact = {"separators": (",", ":")}
        payload = {
            "capability": capability.name,
            "parameters": json.dumps(
                {"orchestrators": {"include": list(self.include), "exclude": list(self.exclude)}}, **compact
            ),
            "request": json.dumps({"run": capability.name}, **compact),
            "timeout_seconds": capability.timeout_seconds,
        }
        return base64.b64encode(json.dumps(payload, sort_keys=True, **compact).encode()).decode()


def listen_address(env: Mapping[str, str]) -> tuple[str, int]:
    """Where the proxy listens, `PROXY_ADDR` (`:8090`, `host:port`, `[::1]:8090`) included:
    app/listen.py's rule, the one Gunicorn, Config and the Docker HEALTHCHECK use."""
    try:
        return _listen_address(env)
    except ListenAddressError as exc:
        raise LivepeerConfigError(str(exc)) from None

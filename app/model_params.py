"""`LLM_PARAMS`: per-model overrides in cot_proxy's grammar, parsed once into typed settings.

    model=NAME,key=value,...;model=OTHER,...        (`model=default` or `model=*`: the fallback)

A cot_proxy string keeps its meaning: strong overrides, `upstream_model_name`,
`append_to_last_user_message`, think tags, and cot_proxy's typing of the keys it
knew (`temperature=1` is 1.0, `top_k=20` is 20). Additions: `default.KEY=v` (set
only when the client sent no KEY), `think_mode`, `think_prefilled=auto|true|false`, JSON values
(`stop=["a","b"]`, commas allowed inside), and typing of other keys. Unlike
cot_proxy, a malformed group stops start-up instead of being skipped.

Standard library only: app/config.py imports it, and gunicorn.conf.py loads
that in the master before gevent patches anything.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import envparse
from .envparse import ConfigError

THINK_MODES = ("strip", "separate", "keep")
FALLBACK_NAMES = ("default", "*")
# Keys stored as raw text and never sent upstream (cot_proxy's special keys and ours).
RAW_KEYS = frozenset({"upstream_model_name", "append_to_last_user_message", "think_tag_start", "think_tag_end"})
CONTROL_KEYS = RAW_KEYS | {"think_mode", "enable_think_tag_filtering", "think_prefilled"}
# cot_proxy's PARAM_TYPES (plus min_p, max_completion_tokens); `mirostat` is left out on
# purpose: cot_proxy made it a bool, so `mirostat=1` became false, while servers want 0/1/2.
FLOAT_KEYS = frozenset({"temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty"})
INT_KEYS = frozenset(
    {
        "top_k",
        "max_tokens",
        "max_completion_tokens",
        "n",
        "seed",
        "num_ctx",
        "num_predict",
        "repeat_last_n",
        "batch_size",
    }
)
BOOL_KEYS = frozenset({"echo", "stream"})

_INT = re.compile(r"[-+]?\d+")
_FLOAT = re.compile(r"[-+]?(\d+\.\d*|\.\d+|\d+)([eE][-+]?\d+)?")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}
_ESCAPE = re.compile(r"\\([ntr\\])")


class ParamsError(ValueError):
    """A malformed `LLM_PARAMS`; the message names the group."""


@dataclass(frozen=True)
class ModelParams:
    """What one `model=NAME` group asks for."""

    name: str
    overrides: dict[str, Any] = field(default_factory=dict)
    """Set in the request body, replacing the client's value."""
    defaults: dict[str, Any] = field(default_factory=dict)
    """Set only when the client did not send the key (`default.KEY=`)."""
    upstream_model: str | None = None
    append_text: str | None = None
    think_mode: str | None = None
    think_start: str | None = None
    think_end: str | None = None
    think_prefilled: bool | None = None
    """True/False as configured; None = `auto` (the default): learned from the model's answers."""

    @property
    def is_fallback(self) -> bool:
        return self.name in FALLBACK_NAMES


@dataclass(frozen=True)
class ModelTable:
    """All groups, looked up by the model name the client sent."""

    by_name: dict[str, ModelParams] = field(default_factory=dict)
    fallback: ModelParams | None = None

    def lookup(self, model: str | None, *, fallback: bool = True) -> ModelParams | None:
        """The group for `model` (exact, case-sensitive), else the fallback group if allowed."""
        found = self.by_name.get(model) if model is not None else None
        return found if found is not None or not fallback else self.fallback

    @property
    def names(self) -> list[str]:
        """Configured model names a client may pick (the fallback is not one)."""
        return list(self.by_name)

    def groups(self) -> list[ModelParams]:
        return [*self.by_name.values(), *([self.fallback] if self.fallback else [])]


def parse_llm_params(text: str | None) -> ModelTable:
    """Parse a whole `LLM_PARAMS` value; raise `ParamsError` naming the first bad group."""
    by_name: dict[str, ModelParams] = {}
    fallback: ModelParams | None = None
    for number, group in enumerate((g.strip() for g in _cut(text or "", ";")), start=1):
        if not group:
            continue
        try:
            params = _parse_group(group)
        except ParamsError as exc:
            raise ParamsError(f"group {number} {_short(group)!r}: {exc}") from None
        if params.name in by_name or (params.is_fallback and fallback is not None):
            raise ParamsError(f"group {number} {_short(group)!r}: model {params.name!r} is configured twice")
        if params.is_fallback:
            fallback = params
        else:
            by_name[params.name] = params
    return ModelTable(by_name, fallback)


def _parse_group(group: str) -> ModelParams:
    pairs: list[tuple[str, str]] = []
    for part in _cut(group, ","):
        if not part.strip():
            continue  # a trailing or doubled comma
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ParamsError(f"{part.strip()!r} is not key=value")
        # Real newlines (a .env loader may have expanded `\n`) are text to append, not padding.
        pairs.append((key, value.strip(" \t") if key == "append_to_last_user_message" else value.strip()))
    if not pairs or pairs[0][0] != "model" or not pairs[0][1]:
        raise ParamsError("a group must start with model=NAME")
    name = pairs[0][1]
    fields: dict[str, Any] = {"overrides": {}, "defaults": {}}
    for key, value in pairs[1:]:
        _apply_pair(fields, key, value)
    return ModelParams(name=name, **fields)


def _apply_pair(fields: dict[str, Any], key: str, value: str) -> None:
    """Store one key=value of a group into `fields` (the ModelParams arguments)."""
    if key == "model":
        raise ParamsError("model= may appear only once per group (use upstream_model_name= for an alias)")
    if key == "upstream_model_name":
        fields["upstream_model"] = _nonempty(key, value)
    elif key == "append_to_last_user_message":
        fields["append_text"] = _ESCAPE.sub(lambda m: _ESCAPES[m.group(1)], value)
    elif key in ("think_tag_start", "think_tag_end"):
        fields[key.replace("_tag", "")] = _nonempty(key, value)
    elif key == "think_mode":
        if value not in THINK_MODES:
            raise ParamsError(f"think_mode={value!r}: use one of {', '.join(THINK_MODES)}")
        fields["think_mode"] = value
    elif key == "enable_think_tag_filtering":  # cot_proxy's switch: true = strip, false = keep
        fields.setdefault("think_mode", "strip" if _boolean(key, value) else "keep")
    elif key == "think_prefilled":
        fields["think_prefilled"] = prefilled_value(key, value)
    elif key.startswith("default."):
        name = key.removeprefix("default.")
        if not name or name in CONTROL_KEYS or name == "model":
            raise ParamsError(f"{key!r}: only request parameters take a default. prefix")
        fields["defaults"][name] = typed_value(name, value)
    else:
        fields["overrides"][key] = typed_value(key, value)


def typed_value(key: str, raw: str) -> Any:
    """The JSON value for `key=raw`: typed by cot_proxy's table for the keys it knew, else by its look."""
    lowered = raw.lower()
    if raw == "" or lowered == "null":
        return None
    try:
        if key in FLOAT_KEYS:
            return float(raw) if _FLOAT.fullmatch(raw) else _fail(key, raw, "a number")
        if key in INT_KEYS:
            return int(raw) if _INT.fullmatch(raw) else _fail(key, raw, "an integer")
        if key in BOOL_KEYS:
            return _boolean(key, raw)
        if lowered in ("true", "false"):
            return lowered == "true"
        if _INT.fullmatch(raw):
            return int(raw)
        if _FLOAT.fullmatch(raw):
            return float(raw)
        if raw[0] in '[{"':
            return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ParamsError(f"{key}={raw!r}: not valid JSON ({exc.msg})") from None
    return raw


def _fail(key: str, raw: str, kind: str) -> Any:
    raise ParamsError(f"{key}={raw!r}: not {kind}")


def _boolean(key: str, raw: str) -> bool:
    lowered = raw.lower()
    if lowered not in ("true", "false"):
        raise ParamsError(f"{key}={raw!r}: use true or false")
    return lowered == "true"


def prefilled_value(key: str, raw: str) -> bool | None:
    """`think_prefilled`: `true`, `false`, or `auto` (None: learned from answers, the default)."""
    lowered = raw.lower()
    if lowered == "auto":
        return None
    if lowered not in ("true", "false"):
        raise ParamsError(f"{key}={raw!r}: use auto, true or false")
    return lowered == "true"


def _nonempty(key: str, value: str) -> str:
    if not value:
        raise ParamsError(f"{key}= needs a value")
    return value


def _short(group: str, limit: int = 60) -> str:
    return group if len(group) <= limit else group[: limit - 3] + "..."


def _cut(text: str, sep: str) -> list[str]:
    """Split `text` on `sep` (`;` or `,`) except inside a JSON value (`[..]`, `{..}`, `".."`).

    A value counts as JSON only when it starts right after `key=`, and never for the
    raw-text keys, so every cot_proxy string splits exactly as cot_proxy split it."""
    pieces: list[str] = []
    start = part = i = 0
    in_value = False
    n = len(text)
    while i < n:
        ch = text[i]
        if ch in ",;":
            if ch == sep:
                pieces.append(text[start:i])
                start = i + 1
            part, in_value = i + 1, False
        elif ch == "=" and not in_value:
            in_value = True
            j = i + 1
            while j < n and text[j] == " ":
                j += 1
            if j < n and text[j] in '[{"' and text[part:i].strip() not in RAW_KEYS:
                i = _json_end(text, j)
                continue
        i += 1
    pieces.append(text[start:])
    return pieces


def _json_end(text: str, i: int) -> int:
    """Index just past the JSON value starting at `text[i]` (or len(text) if it never closes)."""
    depth = 0
    in_string = False
    n = len(text)
    while i < n:
        ch = text[i]
        if in_string:
            if ch == "\\":
                i += 1
            elif ch == '"':
                in_string = False
                if depth == 0:
                    return i + 1
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return n


HOLD_CHARS = 512
"""Default THINK_PREFILL_HOLD_CHARS: what a fast model (~130 tokens/s, 4 characters each) streams in HOLD_MS;
slower models reach HOLD_MS first. Also the most text released at once when the hold ends."""
HOLD_MS = 1000.0
"""Default THINK_PREFILL_HOLD_MS. Measured (bench/think_prefill_ttfc.py): the first visible token of an
unknown model that answers without reasoning comes HOLD_MS (+ one upstream chunk interval) late, once;
nothing once it is known. It catches reasoning whose end tag comes within it (about 200 characters at
50 tokens/s). 1 s keeps a person's flow (vs 0.5 s: half the cost, half the reasoning caught)."""
HOLD_MODELS = (
    r"r1|qwq|qwen-?3|think|reason|deepseek|glm|minimax|kimi|exaone|hunyuan|ernie|openthinker|sky-?t1"
    r"|deepscaler"
)
"""Default THINK_PREFILL_HOLD_MODELS: unknown models whose name (as the client sent it, or as sent upstream)
matches are held back; the families known to reason in `<think>` text. `.*` holds every unknown model."""


@dataclass(frozen=True)
class PrefillHold:
    """THINK_PREFILL_HOLD_*: how long and for which unknown models the think step holds a stream's start
    back until it knows whether the template pre-fills `<think>` (app/transforms/think.py)."""

    chars: int = HOLD_CHARS
    seconds: float = HOLD_MS / 1000.0
    models: re.Pattern[str] = field(default_factory=lambda: re.compile(HOLD_MODELS, re.IGNORECASE))

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> PrefillHold:
        raw = (env.get("THINK_PREFILL_HOLD_MODELS") or "").strip() or HOLD_MODELS
        try:
            models = re.compile(".*" if raw == "*" else raw, re.IGNORECASE)
        except re.error as exc:
            raise ConfigError(f"THINK_PREFILL_HOLD_MODELS={raw!r}: not a regular expression ({exc})") from None
        return cls(
            chars=envparse.integer(env, "THINK_PREFILL_HOLD_CHARS", HOLD_CHARS, low=0, high=1 << 20),
            seconds=envparse.number(env, "THINK_PREFILL_HOLD_MS", HOLD_MS) / 1000.0,
            models=models,
        )

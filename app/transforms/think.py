"""Reasoning handling: strip or separate `<think>` blocks in answers, streamed or not.

Works on decoded JSON strings (`message.content`, `delta.content`, `choices[].text`),
so a tag the upstream wrote as `\\u003cthink\\u003e` is found too. In streams each
choice index has its own `TagSplitter`, which holds back at most a possible tag
prefix, so answer tokens keep flowing and work per chunk is proportional to the chunk.

Where a block starts matters for models whose chat template pre-fills `<think>`
(DeepSeek-R1, QwQ): their output opens inside the block and only `</think>` comes.
- `think_prefilled=true` (per model, in LLM_PARAMS or config.yaml): every choice starts
  inside the block, as vLLM's R1 parser assumes. `false`: every choice starts outside.
- `auto` (the default): decided per request (`Plan`, made in `response_headers`, once
  the body that went upstream is final):
  1. request signals first: an assistant message (or a completions prompt) ending in
     the start tag means inside; `chat_template_kwargs` `enable_thinking`/`thinking`
     false means no reasoning (outside, nothing held back);
  2. else what was learned about the model (app/transforms/prefill.py, shared by
     workers and replicas): pre-fills = inside, except that a JSON answer with no end
     tag at all is an answer, and a `strip` stream that completes without any tag gets
     its text back at the end (up to `LATE_CHARS`); does not pre-fill = outside;
  3. else (not known yet) outside; for a model whose name matches
     THINK_PREFILL_HOLD_MODELS, holding back the start of each choice (at most
     THINK_PREFILL_HOLD_CHARS characters for THINK_PREFILL_HOLD_MS, checked as events
     arrive) while no tag has come: an end tag within the hold makes the held text
     reasoning; past the bound it is released as visible text. Upstream reasoning
     fields end the hold (the upstream already splits reasoning out). The relay calls
     steps only when an event arrives, so an upstream that pauses mid-hold delays the
     held text until its next event, and held text is lost if the stream breaks off:
     hence the name filter, not every unknown model.
  Every answer of an `auto` model without request signals teaches the store: an end
  tag before any start tag = pre-fills; a start tag first, or a completed (`stop`)
  answer with text and no tag = does not.
- Outside, an end tag with no block open is removed, and the text before it becomes
  reasoning only if none of it was sent yet: always in a non-streamed body (vLLM's
  rule), in a stream only while no visible text went out. Text already sent is never
  taken back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from ..config import Config
from ..exchange import Exchange
from ..model_params import ModelParams
from ..observability.exposition import multiprocess_dir
from ..sse import Event
from .base import Transform
from .prefill import PrefillStore, make_store

log = logging.getLogger("cot_proxy.think")

FAMILIES = frozenset({"chat", "completions"})
UPSTREAM_FIELDS = ("reasoning_content", "reasoning")
ENVELOPE = ("id", "object", "created", "model", "system_fingerprint")
LATE_CHARS = 16384
"""`strip`, learned pre-fill, no tag by the end: at most this much stripped text is kept to give back."""


@dataclass(frozen=True)
class ThinkSettings:
    """How one model's reasoning is handled; resolved once per model at start."""

    mode: str
    """`strip`, `separate` or `keep`."""
    start: str
    end: str
    prefilled: bool = False
    fields: tuple[str, ...] = ("reasoning_content",)
    """Where `separate` writes reasoning."""
    auto: bool = False
    """`think_prefilled=auto`: decided per request from signals and what was learned (`Plan`)."""
    prefixes: tuple[str, ...] = field(init=False, repr=False)
    """Proper prefixes of both tags, longest first: what may be held back."""
    firsts: tuple[str, str] = field(init=False, repr=False)
    """The first character of each tag: a text with neither holds no tag and no tag prefix."""

    def __post_init__(self) -> None:
        prefixes = {tag[:k] for tag in (self.start, self.end) for k in range(1, len(tag))}
        object.__setattr__(self, "prefixes", tuple(sorted(prefixes, key=len, reverse=True)))
        object.__setattr__(self, "firsts", (self.start[:1], self.end[:1]))  # "" (no tag) is in every text


def resolve_settings(config: Config, params: ModelParams | None, prefilled: bool | None = None) -> ThinkSettings:
    """Per-model values first, then the global THINK_* ones. `prefilled`: the config file's
    `think_prefilled` for the model, used when its LLM_PARAMS group does not set one."""
    p = params or ModelParams(name="")
    chosen = p.think_prefilled if p.think_prefilled is not None else prefilled
    return ThinkSettings(
        mode=p.think_mode or config.think_mode,
        start=p.think_start or config.think_tag,
        end=p.think_end or config.think_end_tag,
        prefilled=bool(chosen),
        fields=UPSTREAM_FIELDS if config.reasoning_field == "both" else (config.reasoning_field,),
        auto=chosen is None,
    )


@dataclass
class Plan:
    """How one request's choices start; made once per request (`Think.plan`)."""

    inside: bool = False
    """Every choice starts inside the block."""
    hold: bool = False
    """Not known yet: hold back the start of each choice (see `TagSplitter`)."""
    soft: bool = False
    """Inside only because it was learned: a JSON text without an end tag is an answer, and a
    `strip` stream that completes without any tag gets its text back."""
    learn: str | None = None
    """The model whose store entry this request's answers teach (None: configured or decided by
    the request itself)."""
    why: str = "configured"
    """`configured`, `assistant_prefill`, `no_thinking`, `learned`, `unknown`, `unnamed`."""
    hold_chars: int = 0
    hold_seconds: float = 0.0
    clock: Callable[[], float] = time.monotonic


def request_signal(ex: Exchange, start: str) -> str | None:
    """What the request itself says: `assistant_prefill` (the answer continues text ending in the
    start tag: inside), `no_thinking` (the template was told not to reason), or None."""
    body = ex.body if isinstance(ex.body, dict) else {}
    if ex.family == "chat":
        messages = body.get("messages")
        last = messages[-1] if isinstance(messages, list) and messages else None
        if isinstance(last, dict) and last.get("role") == "assistant" and _ends_with(last.get("content"), start):
            return "assistant_prefill"
    elif ex.family == "completions":
        prompt = body.get("prompt")
        prompts = prompt if isinstance(prompt, list) and prompt else [prompt]
        if all(isinstance(p, str) and p.rstrip().endswith(start) for p in prompts):
            return "assistant_prefill"
    kwargs = body.get("chat_template_kwargs")
    if isinstance(kwargs, dict) and (kwargs.get("enable_thinking") is False or kwargs.get("thinking") is False):
        return "no_thinking"
    if body.get("enable_thinking") is False:
        return "no_thinking"
    return None


def _ends_with(content: Any, start: str) -> bool:
    """A message's text (a string, or its last text part) ends with the start tag."""
    if isinstance(content, list):
        texts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        content = texts[-1] if texts else None
    return isinstance(content, str) and content.rstrip().endswith(start)


class TagSplitter:
    """One choice's text split into (answer, reasoning) as it arrives.

    `feed` returns what can be decided now; `finish` flushes the held-back rest.
    A start tag inside a block and an end tag outside one are dropped (no nesting).

    With a `Plan` that holds, visible text before any tag is kept back (`held`) until a tag
    decides it or the hold's bound passes (`hold_chars` characters, `hold_seconds` since the
    first held text, checked at each `feed`). `first_tag` and `saw_text` are what the answer
    showed, for learning."""

    __slots__ = (
        "s",
        "inside",
        "pending",
        "skip_ws",
        "seen_tag",
        "released",
        "holding",
        "held",
        "hold_chars",
        "hold_seconds",
        "hold_since",
        "clock",
        "first_tag",
        "saw_text",
        "late",
        "late_len",
    )

    def __init__(self, settings: ThinkSettings, plan: Plan | None = None, *, late: bool = False) -> None:
        self.s = settings
        self.inside = settings.prefilled if plan is None else plan.inside
        self.pending = ""  # a possible tag prefix, never longer than a tag
        self.skip_ws = False  # drop whitespace right after an end tag
        self.seen_tag = self.inside
        self.released = False  # visible text has gone out
        self.holding = plan is not None and plan.hold and not self.inside
        self.held = ""  # visible text kept back while holding, at most hold_chars
        self.hold_chars = plan.hold_chars if plan is not None else 0
        self.hold_seconds = plan.hold_seconds if plan is not None else 0.0
        self.hold_since: float | None = None
        self.clock = plan.clock if plan is not None else time.monotonic
        self.first_tag: str | None = None  # "start" or "end": the first tag in the text
        self.saw_text = False  # some non-blank text came
        self.late: list[str] | None = [] if late and self.inside else None  # stripped text to give back
        self.late_len = 0

    def feed(self, text: str) -> tuple[str, str]:
        if not self.saw_text and text and not text.isspace():
            self.saw_text = True
        first, first_end = self.s.firsts
        if (
            first not in text
            and first_end not in text
            and not self.pending
            and not self.held
            and not self.holding
            and self.late is None
        ):
            # The usual chunk: no tag can start in it and nothing is held back, so the text is
            # all reasoning or all answer and no state changes (what the loop below would find).
            if self.inside:
                return "", text
            if self.released and not self.skip_ws:
                return text, ""
        buf = self.pending + text
        answer: list[str] = [self.held] if self.held else []
        self.held = ""
        reasoning: list[str] = []
        at_start, at_end = buf.find(self.s.start), buf.find(self.s.end)
        i = self._tags(buf, at_start, at_end, answer, reasoning) if at_start >= 0 or at_end >= 0 else 0
        held = self._held(buf, i)
        self._emit(buf[i : len(buf) - held], answer, reasoning)
        self.pending = buf[len(buf) - held :]
        if self.holding:
            if not self.seen_tag and self._within_hold(answer):
                self.held = "".join(answer)
                return "", "".join(reasoning)
            self.holding = False
        out = "".join(answer)
        if not self.released and out.strip():
            self.released = True
        if self.late is not None:
            self._keep_late(reasoning)
        return out, "".join(reasoning)

    def _tags(self, buf: str, at_start: int, at_end: int, answer: list[str], reasoning: list[str]) -> int:
        """Split `buf` at each whole tag (the first found at `at_start`/`at_end`), the text between to
        `answer` or `reasoning`; returns where the text after the last tag begins. Apart from `feed`,
        which calls it only when a tag is there, so a chunk without one costs no call."""
        start, end = self.s.start, self.s.end
        i = 0
        while at_start >= 0 or at_end >= 0:
            # The earlier tag wins; on a tie the longer one (one tag may begin with the other).
            if at_start < 0 or at_end < 0:
                is_end = at_end >= 0
            else:
                is_end = at_end < at_start or (at_end == at_start and len(end) > len(start))
            j = at_end if is_end else at_start
            self._emit(buf[i:j], answer, reasoning)
            if is_end and not self.inside and not self.seen_tag and not self.released:
                reasoning.extend(answer)  # the head of the text was reasoning after all
                answer.clear()
            if self.first_tag is None:
                self.first_tag = "end" if is_end else "start"
            if is_end:
                self.inside, self.skip_ws = False, True
            else:
                self.inside = True
            self.seen_tag = True
            i = j + len(end if is_end else start)
            if at_start < i:
                at_start = buf.find(start, i) if at_start >= 0 else -1
            if at_end < i:
                at_end = buf.find(end, i) if at_end >= 0 else -1
        return i

    def finish(self, completed: bool = False) -> tuple[str, str]:
        """Flush what is held back: an unfinished tag prefix is plain text after all, and held
        text is visible. `completed` (finish_reason `stop`): a late-kept text with no tag at all
        was the answer (see `Plan.soft`)."""
        answer: list[str] = [self.held] if self.held else []
        self.held, self.holding = "", False
        reasoning: list[str] = []
        self._emit(self.pending, answer, reasoning)
        self.pending = ""
        if self.late is not None:
            self._keep_late(reasoning)
            if completed and self.late is not None:
                answer, reasoning = [*self.late, *answer], []
            self.late = None
        return "".join(answer), "".join(reasoning)

    def release(self) -> str:
        """End the hold now (the upstream splits reasoning itself): the held text, visible."""
        out, self.held, self.holding = self.held, "", False
        if out.strip():
            self.released = True
        return out

    def _within_hold(self, answer: list[str]) -> bool:
        size = sum(len(a) for a in answer)  # at most hold_chars, in at most two pieces per feed
        if not size:
            return True
        if size > self.hold_chars:
            return False
        now = self.clock()
        if self.hold_since is None:
            self.hold_since = now
        return now - self.hold_since < self.hold_seconds

    def _keep_late(self, reasoning: list[str]) -> None:
        if self.first_tag is not None:
            self.late = None  # a tag came: what was stripped was reasoning indeed
            return
        assert self.late is not None
        for piece in reasoning:
            self.late.append(piece)
            self.late_len += len(piece)
        if self.late_len > LATE_CHARS:
            self.late = None

    def _held(self, buf: str, i: int) -> int:
        """Length of the longest tail of `buf[i:]` that could still grow into a tag."""
        room = len(buf) - i
        for prefix in self.s.prefixes:
            if len(prefix) <= room and buf.endswith(prefix):
                return len(prefix)
        return 0

    def _emit(self, piece: str, answer: list[str], reasoning: list[str]) -> None:
        if not piece:
            return
        if self.inside:
            reasoning.append(piece)
            return
        if self.skip_ws:
            piece = piece.lstrip()
            if not piece:
                return
            self.skip_ws = False
        answer.append(piece)


def split_text(settings: ThinkSettings, text: str, plan: Plan | None = None) -> tuple[str, str]:
    """A whole text at once (non-streamed bodies): (answer, reasoning)."""
    splitter = TagSplitter(settings, plan)
    answer, reasoning = splitter.feed(text)
    tail_answer, tail_reasoning = splitter.finish()
    return answer + tail_answer, reasoning + tail_reasoning


@dataclass
class StreamState:
    """Per request: the settings, the plan, one splitter per choice index, the last chunk seen."""

    settings: ThinkSettings
    text_key: str
    """`content` (chat: in `delta`/`message`) or `text` (completions: in the choice)."""
    plan: Plan | None = None
    """None until `Think.response_headers` made it: then `settings` alone decide (no hold, no learning)."""
    splitters: dict[int, TagSplitter] = field(default_factory=dict)
    last: dict[str, Any] = field(default_factory=dict)
    """Its id, model, created...: the envelope for text flushed at the end."""
    upstream_reasoning: bool = False
    """The upstream sent reasoning fields: it splits reasoning out itself, nothing more is held."""
    learned: bool | None = None
    """What this request last taught the store (so each finding is written once)."""

    def splitter(self, index: int) -> TagSplitter:
        found = self.splitters.get(index)
        if found is None:
            plan = self.plan
            if plan is not None and plan.hold and self.upstream_reasoning:
                plan = replace(plan, hold=False)
            late = plan is not None and plan.soft and self.settings.mode == "strip"
            found = self.splitters[index] = TagSplitter(self.settings, plan, late=late)
        return found


class Think(Transform):
    """Strips or separates reasoning per the model's settings; `keep` does not apply at all."""

    name = "think"

    def __init__(
        self, config: Config, store: PrefillStore | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.table = config.llm_params
        self.default = resolve_settings(config, None)
        self.by_group = {g.name: resolve_settings(config, g) for g in self.table.groups()}
        # config.yaml `models.<name>.think_prefilled`, where the name's LLM_PARAMS group sets none.
        specs = config.routing.models if config.routing is not None else {}
        self.by_name = {
            name: resolve_settings(config, self.table.lookup(name), spec.think_prefilled)
            for name, spec in specs.items()
            if spec.think_prefilled is not None
        }
        hold = config.prefill_hold
        self.hold_chars, self.hold_seconds, self.hold_models = hold.chars, hold.seconds, hold.models
        self.clock = clock
        if store is None:
            from ..observability.labels import ModelLabels

            labels = ModelLabels.for_config(config)
            access = config.access
            store = make_store(
                access.redis_url,
                access.redis_prefix,
                access.redis_timeout,
                multiprocess_dir(),
                on_learned=lambda model, pre: _count_learned(labels.label(model), pre),
            )
        self.store = store
        self._bound = False

    def _share_redis(self) -> None:
        """Once, in the first request: use the rate limiter's Redis client and circuit when it talks to
        the same Redis, so a hung Redis costs one timeout per worker, not one more for this step."""
        self._bound = True
        adopt = getattr(self.store, "adopt", None)
        if adopt is None:
            return
        try:
            from flask import current_app, has_app_context

            from ..access.api import find_guard

            if not has_app_context():
                return
            guard = find_guard(current_app)
            limiter = getattr(guard, "limiter", None)
            settings = getattr(guard, "settings", None)
            if (
                getattr(settings, "redis_url", None) == getattr(self.store, "url", None)
                and hasattr(limiter, "client")
                and hasattr(limiter, "circuit")
            ):
                adopt(limiter.client, limiter.circuit)
        except Exception:  # sharing is an optimisation: this step's own client still works
            log.debug("think: not sharing the rate limiter's Redis client", exc_info=True)

    def settings_for(self, model: str | None) -> ThinkSettings:
        if model is not None and model in self.by_name:
            return self.by_name[model]
        params = self.table.lookup(model)
        return self.by_group[params.name] if params is not None else self.default

    def applies(self, ex: Exchange) -> bool:
        if ex.family not in FAMILIES or not isinstance(ex.body, dict):
            return False
        settings = self.settings_for(ex.client_model)
        if settings.mode == "keep":
            return False
        ex.state[self.name] = StreamState(settings, "text" if ex.family == "completions" else "content")
        return True

    def plan(self, ex: Exchange, settings: ThinkSettings) -> Plan:
        """How this request's choices start: configured, said by the request, learned, or held."""
        if not settings.auto:
            return Plan(inside=settings.prefilled)
        signal = request_signal(ex, settings.start)
        if signal is not None:
            return Plan(inside=signal == "assistant_prefill", why=signal)
        model = ex.client_model
        if not self._bound:
            self._share_redis()
        known = self.store.get(model)
        if known is not None:
            return Plan(inside=known, soft=known, learn=model, why="learned")
        sent = ex.body.get("model") if isinstance(ex.body, dict) else None
        hold = (
            self.hold_chars > 0
            and self.hold_seconds > 0
            and any(isinstance(m, str) and self.hold_models.search(m) for m in (model, sent))
        )
        return Plan(
            hold=hold,
            learn=model,
            why="unknown" if model else "unnamed",
            hold_chars=self.hold_chars,
            hold_seconds=self.hold_seconds,
            clock=self.clock,
        )

    def response_headers(self, ex: Exchange, status: int, headers: dict[str, str]) -> None:
        st: StreamState | None = ex.state.get(self.name)
        if st is not None and st.plan is None and status < 400:
            st.plan = self.plan(ex, st.settings)

    def _observe(self, ex: Exchange, st: StreamState, splitter: TagSplitter, finish: Any = None) -> None:
        """Teach the store what this choice showed (an `auto` model, no request signal)."""
        if st.plan is None or st.plan.learn is None:
            return
        if splitter.first_tag is not None:
            prefilled = splitter.first_tag == "end"
        elif finish == "stop" and splitter.saw_text:
            prefilled = False
        else:
            return
        if st.learned is not prefilled:
            st.learned = prefilled
            self.store.learn(st.plan.learn, prefilled)

    # -- whole bodies --------------------------------------------------------

    def response_json(self, ex: Exchange, data: Any) -> Any:
        st: StreamState = ex.state[self.name]
        plan = st.plan
        for choice in _choices(data):
            holder = _holder(st, choice, "message")
            if holder is None:
                continue
            reasoning = _pop_reasoning(holder)
            text = holder.get(st.text_key)
            if isinstance(text, str):
                # Learned (soft) inside: only a text that has the end tag starts inside.
                inside = (plan.inside and (not plan.soft or st.settings.end in text)) if plan else st.settings.prefilled
                splitter = TagSplitter(st.settings, Plan(inside=inside))
                answer, extra = splitter.feed(text)
                tail_answer, tail_reasoning = splitter.finish()
                holder[st.text_key] = answer + tail_answer
                reasoning += extra + tail_reasoning
                self._observe(ex, st, splitter, choice.get("finish_reason"))
            _put_reasoning(st.settings, holder, reasoning)
        return data

    # -- streams -------------------------------------------------------------

    def stream_event(self, ex: Exchange, event: Event) -> Iterable[Event]:
        data = event.json()
        choices = _choices(data)
        if not choices:
            return (event,)
        st: StreamState = ex.state[self.name]
        st.last = data
        kept: list[Any] = []
        changed = False
        for choice in choices:
            outcome = self._stream_choice(ex, st, choice)
            changed = changed or outcome is not None
            if outcome is not False:
                kept.append(choice)
        if not changed:
            return (event,)
        if not kept and not data.get("usage"):
            return ()
        data["choices"] = kept
        event.set_json(data)
        return (event,)

    def _stream_choice(self, ex: Exchange, st: StreamState, choice: Any) -> bool | None:
        """Rewrite one streamed choice in place: None = untouched, False = now empty, True = changed."""
        if not isinstance(choice, dict):
            return None
        holder = _holder(st, choice, "delta")
        if holder is None:
            if choice.get("finish_reason") is None:
                return None
            holder = {}  # a bare finish chunk may still have to carry flushed text
        touched = "reasoning_content" in holder or "reasoning" in holder  # UPSTREAM_FIELDS
        reasoning = _pop_reasoning(holder) if touched else ""
        text = holder.get(st.text_key)
        answer = ""
        splitter = st.splitter(choice.get("index", 0))
        if reasoning:
            st.upstream_reasoning = True
            if splitter.holding:
                answer = splitter.release()
                touched = touched or bool(answer)
        if isinstance(text, str) and text:
            fed, extra = splitter.feed(text)
            answer += fed
            reasoning += extra
            touched = touched or answer != text
            self._observe(ex, st, splitter)
        finish = choice.get("finish_reason")
        if finish is not None:
            answer, reasoning, flushed = self._flush_choice(ex, st, splitter, finish, answer, reasoning)
            touched = touched or flushed
        if not touched:
            return None
        if st.text_key == "content" and choice.get("delta") is not holder:
            choice["delta"] = holder
        if st.text_key in holder or answer:
            holder[st.text_key] = answer
        _put_reasoning(st.settings, holder, reasoning)
        return not _is_empty(st, choice, holder)

    def _flush_choice(
        self, ex: Exchange, st: StreamState, splitter: TagSplitter, finish: Any, answer: str, reasoning: str
    ) -> tuple[str, str, bool]:
        """A choice's last chunk carries what its splitter still holds: (answer, reasoning, whether any was
        added). Once per choice, so out of `_stream_choice`'s per-chunk path."""
        tail_answer, tail_reasoning = splitter.finish(completed=finish == "stop")
        self._observe(ex, st, splitter, finish)
        return answer + tail_answer, reasoning + tail_reasoning, bool(tail_answer or tail_reasoning)

    def stream_end(self, ex: Exchange) -> Iterable[Event]:
        """The stream ended without a finish_reason for some choices: flush what they hold."""
        st: StreamState = ex.state[self.name]
        events: list[Event] = []
        envelope = {k: st.last[k] for k in ENVELOPE if k in st.last}
        for index, splitter in st.splitters.items():
            answer, reasoning = splitter.finish()
            if not answer and not (reasoning and st.settings.mode == "separate"):
                continue
            choice: dict[str, Any] = {"index": index}
            holder = choice if st.text_key == "text" else choice.setdefault("delta", {})
            holder[st.text_key] = answer
            _put_reasoning(st.settings, holder, reasoning)
            if st.text_key == "text":
                choice["logprobs"] = None
            choice["finish_reason"] = None
            events.append(Event.from_json({**envelope, "choices": [choice]}))
        return events

    def known(self) -> dict[str, Any]:
        """What GET /v1/metadata shows: the store, the hold, and the models learned."""
        return {
            "store": self.store.kind,
            "hold_chars": self.hold_chars,
            "hold_ms": round(self.hold_seconds * 1000),
            "hold_models": self.hold_models.pattern,
            "models": self.store.known(),
        }


def _count_learned(model: str, prefilled: bool) -> None:
    from ..observability import metrics

    metrics.think_prefill_learned.labels(model, "true" if prefilled else "false").inc()


def _choices(data: Any) -> list[Any]:
    choices = data.get("choices") if isinstance(data, dict) else None
    return choices if isinstance(choices, list) else []


def _holder(st: StreamState, choice: Any, chat_key: str) -> dict[str, Any] | None:
    """The dict that carries the text: the choice (completions), its `delta` or `message` (chat)."""
    if not isinstance(choice, dict):
        return None
    holder = choice if st.text_key == "text" else choice.get(chat_key)
    return holder if isinstance(holder, dict) else None


def _pop_reasoning(holder: dict[str, Any]) -> str:
    """Remove upstream reasoning fields; return their text (`reasoning_content` preferred)."""
    found = [holder.pop(f, None) for f in UPSTREAM_FIELDS]
    return next((r for r in found if isinstance(r, str) and r), "")


def _put_reasoning(settings: ThinkSettings, holder: dict[str, Any], reasoning: str) -> None:
    if reasoning and settings.mode == "separate":
        for name in settings.fields:
            holder[name] = reasoning


def _is_empty(st: StreamState, choice: dict[str, Any], holder: dict[str, Any]) -> bool:
    """Nothing left worth a chunk: no text, finish_reason, role, tool calls or reasoning."""
    if choice.get("finish_reason") is not None or holder.get(st.text_key):
        return False
    return st.text_key == "text" or not any(v for k, v in holder.items() if k != st.text_key)

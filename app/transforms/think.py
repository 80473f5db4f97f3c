"""Reasoning handling: strip or separate `<think>` blocks in answers, streamed or not.

Works on decoded JSON strings (`message.content`, `delta.content`, `choices[].text`),
so a tag the upstream wrote as `\\u003cthink\\u003e` is found too. In streams each
choice index has its own `TagSplitter`, which holds back at most a possible tag
prefix, so answer tokens keep flowing and work per chunk is proportional to the chunk.

Where a block starts matters for models whose chat template pre-fills `<think>`
(DeepSeek-R1, Qwen3): their output opens inside the block and only `</think>` comes.
- `think_prefilled=true` (per model, in LLM_PARAMS): every choice starts inside the
  block, as vLLM's R1 parser assumes. Use this for such models when streaming.
- Otherwise a choice starts outside; an end tag with no block open is removed, and the
  text before it becomes reasoning only if none of it was sent yet: always in a
  non-streamed body (vLLM's rule), in a stream only while no visible text went out.
  Text already sent is never taken back.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..config import Config
from ..exchange import Exchange
from ..model_params import ModelParams
from ..sse import Event
from .base import Transform

FAMILIES = frozenset({"chat", "completions"})
UPSTREAM_FIELDS = ("reasoning_content", "reasoning")
ENVELOPE = ("id", "object", "created", "model", "system_fingerprint")


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
    prefixes: tuple[str, ...] = field(init=False, repr=False)
    """Proper prefixes of both tags, longest first: what may be held back."""

    def __post_init__(self) -> None:
        prefixes = {tag[:k] for tag in (self.start, self.end) for k in range(1, len(tag))}
        object.__setattr__(self, "prefixes", tuple(sorted(prefixes, key=len, reverse=True)))


def resolve_settings(config: Config, params: ModelParams | None) -> ThinkSettings:
    """Per-model values first, then the global THINK_* ones."""
    p = params or ModelParams(name="")
    return ThinkSettings(
        mode=p.think_mode or config.think_mode,
        start=p.think_start or config.think_tag,
        end=p.think_end or config.think_end_tag,
        prefilled=bool(p.think_prefilled),
        fields=UPSTREAM_FIELDS if config.reasoning_field == "both" else (config.reasoning_field,),
    )


class TagSplitter:
    """One choice's text split into (answer, reasoning) as it arrives.

    `feed` returns what can be decided now; `finish` flushes the held-back rest.
    A start tag inside a block and an end tag outside one are dropped (no nesting)."""

    __slots__ = ("s", "inside", "pending", "skip_ws", "seen_tag", "released")

    def __init__(self, settings: ThinkSettings) -> None:
        self.s = settings
        self.inside = settings.prefilled
        self.pending = ""      # a possible tag prefix, never longer than a tag
        self.skip_ws = False   # drop whitespace right after an end tag
        self.seen_tag = settings.prefilled
        self.released = False  # visible text has gone out

    def feed(self, text: str) -> tuple[str, str]:
        buf = self.pending + text
        start, end = self.s.start, self.s.end
        answer: list[str] = []
        reasoning: list[str] = []
        i = 0
        at_start, at_end = buf.find(start), buf.find(end)
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
        held = self._held(buf, i)
        self._emit(buf[i:len(buf) - held], answer, reasoning)
        self.pending = buf[len(buf) - held:]
        out = "".join(answer)
        if not self.released and out.strip():
            self.released = True
        return out, "".join(reasoning)

    def finish(self) -> tuple[str, str]:
        """Flush what is held back: an unfinished tag prefix is plain text after all."""
        answer: list[str] = []
        reasoning: list[str] = []
        self._emit(self.pending, answer, reasoning)
        self.pending = ""
        return "".join(answer), "".join(reasoning)

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


def split_text(settings: ThinkSettings, text: str) -> tuple[str, str]:
    """A whole text at once (non-streamed bodies): (answer, reasoning)."""
    splitter = TagSplitter(settings)
    answer, reasoning = splitter.feed(text)
    tail_answer, tail_reasoning = splitter.finish()
    return answer + tail_answer, reasoning + tail_reasoning


@dataclass
class StreamState:
    """Per request: the settings, one splitter per choice index, the last chunk seen."""

    settings: ThinkSettings
    text_key: str
    """`content` (chat: in `delta`/`message`) or `text` (completions: in the choice)."""
    splitters: dict[int, TagSplitter] = field(default_factory=dict)
    last: dict[str, Any] = field(default_factory=dict)
    """Its id, model, created...: the envelope for text flushed at the end."""

    def splitter(self, index: int) -> TagSplitter:
        found = self.splitters.get(index)
        if found is None:
            found = self.splitters[index] = TagSplitter(self.settings)
        return found


class Think(Transform):
    """Strips or separates reasoning per the model's settings; `keep` does not apply at all."""

    name = "think"

    def __init__(self, config: Config) -> None:
        self.table = config.llm_params
        self.default = resolve_settings(config, None)
        self.by_group = {g.name: resolve_settings(config, g) for g in self.table.groups()}

    def settings_for(self, model: str | None) -> ThinkSettings:
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

    # -- whole bodies --------------------------------------------------------

    def response_json(self, ex: Exchange, data: Any) -> Any:
        st: StreamState = ex.state[self.name]
        for choice in _choices(data):
            holder = _holder(st, choice, "message")
            if holder is None:
                continue
            reasoning = _pop_reasoning(holder)
            text = holder.get(st.text_key)
            if isinstance(text, str):
                holder[st.text_key], extra = split_text(st.settings, text)
                reasoning += extra
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
            outcome = self._stream_choice(st, choice)
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

    def _stream_choice(self, st: StreamState, choice: Any) -> bool | None:
        """Rewrite one streamed choice in place: None = untouched, False = now empty, True = changed."""
        if not isinstance(choice, dict):
            return None
        holder = _holder(st, choice, "delta")
        if holder is None:
            if choice.get("finish_reason") is None:
                return None
            holder = {}  # a bare finish chunk may still have to carry flushed text
        touched = any(f in holder for f in UPSTREAM_FIELDS)
        reasoning = _pop_reasoning(holder) if touched else ""
        text = holder.get(st.text_key)
        answer = ""
        splitter = st.splitter(choice.get("index", 0))
        if isinstance(text, str) and text:
            answer, extra = splitter.feed(text)
            reasoning += extra
            touched = touched or answer != text
        if choice.get("finish_reason") is not None:
            tail_answer, tail_reasoning = splitter.finish()
            if tail_answer or tail_reasoning:
                answer, reasoning, touched = answer + tail_answer, reasoning + tail_reasoning, True
        if not touched:
            return None
        if st.text_key == "content" and choice.get("delta") is not holder:
            choice["delta"] = holder
        if st.text_key in holder or answer:
            holder[st.text_key] = answer
        _put_reasoning(st.settings, holder, reasoning)
        return not _is_empty(st, choice, holder)

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

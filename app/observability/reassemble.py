"""Rebuilding a streamed answer from its events, as the non-streamed answer would have been.

Chat chunks (`choices[].delta`) become `choices[].message` with `content`,
`reasoning_content`/`reasoning`, `refusal` and `tool_calls` (pieces of one
call, keyed by its `index`, joined into one); completion chunks
(`choices[].text`) are joined per choice. The last non-null `finish_reason`
wins. Only reads: the events going to the client are untouched.
"""

from __future__ import annotations

from typing import Any

ENVELOPE = ("id", "created", "model", "system_fingerprint", "service_tier")
TEXT_FIELDS = ("content", "reasoning_content", "reasoning", "refusal")


class _Choice:
    __slots__ = ("index", "role", "texts", "tool_calls", "function_call", "finish_reason", "text", "is_chat")

    def __init__(self, index: int) -> None:
        self.index = index
        self.role: str | None = None
        self.texts: dict[str, list[str]] = {}
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.function_call: dict[str, Any] | None = None
        self.finish_reason: Any = None
        self.text: list[str] = []
        self.is_chat = False


class StreamReassembler:
    def __init__(self) -> None:
        self.envelope: dict[str, Any] = {}
        self.choices: dict[int, _Choice] = {}
        self.usage: dict[str, Any] | None = None
        self.error: Any = None
        self.events = 0

    def feed(self, obj: Any) -> None:
        """One decoded `data:` JSON object of the stream."""
        if not isinstance(obj, dict):
            return
        self.events += 1
        for key in ENVELOPE:
            if key in obj and key not in self.envelope:
                self.envelope[key] = obj[key]
        if isinstance(obj.get("usage"), dict):
            self.usage = obj["usage"]
        if "error" in obj and not obj.get("choices"):
            self.error = obj["error"]
        choices = obj.get("choices")
        if not isinstance(choices, list):
            return
        for raw in choices:
            if isinstance(raw, dict):
                self._choice(raw)

    def _choice(self, raw: dict[str, Any]) -> None:
        """One chunk's choice added to the choice of its `index` (made on first sight)."""
        index = raw.get("index", 0)
        index = index if isinstance(index, int) else 0
        choice = self.choices.get(index)
        if choice is None:
            choice = self.choices[index] = _Choice(index)
        delta = raw.get("delta")
        if isinstance(delta, dict):
            choice.is_chat = True
            self._delta(choice, delta)
        text = raw.get("text")
        if isinstance(text, str):
            choice.text.append(text)
        if raw.get("finish_reason") is not None:
            choice.finish_reason = raw["finish_reason"]

    @staticmethod
    def _delta(choice: _Choice, delta: dict[str, Any]) -> None:
        role = delta.get("role")
        if isinstance(role, str):
            choice.role = role
        for key in TEXT_FIELDS:
            value = delta.get(key)
            if isinstance(value, str):
                choice.texts.setdefault(key, []).append(value)
        calls = delta.get("tool_calls")
        if isinstance(calls, list):
            _add_tool_calls(choice, calls)
        legacy = delta.get("function_call")
        if isinstance(legacy, dict):
            fc = choice.function_call = choice.function_call or {"name": "", "arguments": ""}
            for key in ("name", "arguments"):
                if isinstance(legacy.get(key), str):
                    fc[key] += legacy[key]

    def result(self, family: str, usage: dict[str, Any] | None = None) -> dict[str, Any]:
        """The answer as one JSON body (`chat.completion` or `text_completion`)."""
        chat = family == "chat" or any(c.is_chat for c in self.choices.values())
        kind = "chat.completion" if chat else "text_completion"
        out: dict[str, Any] = {"id": self.envelope.get("id"), "object": kind}
        for key in ENVELOPE[1:]:
            if key in self.envelope:
                out[key] = self.envelope[key]
        choices = []
        for index in sorted(self.choices, key=_index_order):
            c = self.choices[index]
            if chat:
                message: dict[str, Any] = {
                    "role": c.role or "assistant",
                    "content": "".join(c.texts["content"]) if "content" in c.texts else None,
                }
                for key in TEXT_FIELDS[1:]:
                    if key in c.texts:
                        message[key] = "".join(c.texts[key])
                if c.tool_calls:
                    message["tool_calls"] = [c.tool_calls[i] for i in sorted(c.tool_calls, key=_index_order)]
                if c.function_call is not None:
                    message["function_call"] = c.function_call
                choices.append({"index": index, "message": message, "finish_reason": c.finish_reason})
            else:
                choices.append({"index": index, "text": "".join(c.text), "finish_reason": c.finish_reason})
        out["choices"] = choices
        out["usage"] = usage if usage is not None else self.usage
        if self.error is not None:
            out["error"] = self.error
        return out


def _add_tool_calls(choice: _Choice, calls: list[Any]) -> None:
    """A delta's `tool_calls` pieces joined into the calls so far: one call per `index`, its strings appended."""
    for position, part in enumerate(calls):
        if not isinstance(part, dict):
            continue
        index = part.get("index", position)
        call = choice.tool_calls.setdefault(index, {})
        for key in ("id", "type"):
            if isinstance(part.get(key), str):
                call[key] = part[key]
        function = part.get("function")
        if isinstance(function, dict):
            target = call.setdefault("function", {"name": "", "arguments": ""})
            if isinstance(function.get("name"), str):
                target["name"] += function["name"]
            if isinstance(function.get("arguments"), str):
                target["arguments"] += function["arguments"]


def _index_order(index: Any) -> tuple[bool, Any]:
    """Numbers first, in order, then anything else an upstream sent as an `index` (mixing them is not
    comparable, and a recorder must not fail on a malformed stream)."""
    return (False, index) if isinstance(index, int) and not isinstance(index, bool) else (True, str(index))

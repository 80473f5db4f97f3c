"""Drop SSE events that break OpenAI SDK parsers in chat and completion streams.

The `openai` SDK runs `json.loads` on every event's data and reads `choices`
from it. A gateway's `{"balance": ...}` event, an `event: ping` with no data,
or a data line that is not JSON make it raise or crash user code. Kept:
`[DONE]`, chunks with a `choices` key (usage chunks have `choices: []`),
in-band `{"error": ...}` events (the SDK turns them into `APIError`), and
`: comment` keep-alives. Events are judged whole, one at a time.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..exchange import Exchange
from ..sse import Event
from .base import Transform

FAMILIES = frozenset({"chat", "completions"})


class SSEFilter(Transform):
    name = "sse_filter"

    def applies(self, ex: Exchange) -> bool:
        return ex.family in FAMILIES

    def stream_event(self, ex: Exchange, event: Event) -> Iterable[Event]:
        data = event.data_bytes  # bytes: nothing decoded to judge [DONE] or a comment
        if data is None:
            # Comments pass; a named event with no data would be parsed as "" and fail.
            return (event,) if event.is_comment else ()
        if data.startswith(b"[DONE]"):
            return (event,)
        # Validity needs the one parse every later step then shares (`Event` caches it).
        obj = event.json()
        if not isinstance(obj, dict) or not ("choices" in obj or "error" in obj):
            return ()
        if event.name is not None:
            event.set_json(obj)  # drop the `event:` line; the SDK expects plain data events
        return (event,)

"""Per-chunk fast paths (issue 13): byte-level checks that skip work must change nothing a client sees."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from app.exchange import Exchange
from app.sse import Event, SSEDecoder, may_have_key
from app.transforms.model_name import ModelName
from app.transforms.sse_filter import SSEFilter
from app.transforms.think import Plan, TagSplitter, ThinkSettings
from app.transforms.usage import UsageCapture

START, END = "<think>", "</think>"


def _ex(body: dict[str, Any], client_model: str | None = None) -> Exchange:
    return Exchange(
        request_id="t", family="chat", method="POST", path="chat/completions", body=body, client_model=client_model
    )


# -- Event ---------------------------------------------------------------------------------------


def test_json_is_parsed_from_bytes_and_invalid_utf8_reads_as_before():
    assert Event(b'data: {"a": "\xc3\xa9"}\n\n').json() == {"a": "é"}
    # Not UTF-8: the data is read with replacement characters, as `Event.data` reads it.
    assert Event(b'data: {"a": "\xff"}\n\n').json() == {"a": "\ufffd"}
    assert Event(b'data: {"a": 1}\r\ndata: }\r\n\r\n').json() is None  # two lines, not JSON


def test_data_bytes_done_and_comments():
    event = Event(b"event: x\ndata: [DONE]\n\n")
    assert event.data_bytes == b"[DONE]" and event.data == "[DONE]" and event.is_done and event.name == "x"
    assert Event(b": keep-alive\n\n").data_bytes is None and Event(b": keep-alive\n\n").is_comment
    assert not Event(b"data: [DON\n\n").is_done


lines = st.sampled_from([b'data: {"a":1}', b"data: x", b": c", b"event: e", b"", b"id: 1", b"data:"])
ends = st.sampled_from([b"\n", b"\r\n", b"\r"])
streams = st.lists(st.tuples(st.lists(st.tuples(lines, ends), max_size=3), ends), max_size=6)


def _decode(parts: list[bytes]) -> list[tuple[Any, ...]]:
    """Each event's fields, and its bytes where no `\\r` makes them depend on where a chunk ended."""
    decoder = SSEDecoder()
    return [
        (e.data, e.name, e.is_comment, e.raw if b"\r" not in e.raw else None)
        for part in parts
        for e in decoder.feed(part)
    ]


@settings(max_examples=300)
@given(stream=streams, cuts=st.lists(st.integers(0, 200), max_size=6), whole=st.booleans())
def test_decoder_fast_path_finds_what_the_scan_finds(stream, cuts, whole):
    """Chunks that are one whole event each (the fast path) or cut anywhere: the events byte by byte."""
    events = [b"".join(line + end for line, end in ev) + blank for ev, blank in stream]
    raw = b"".join(events)
    expected = _decode([raw[i : i + 1] for i in range(len(raw))])
    assert _decode(events) == expected
    points = sorted({min(c, len(raw)) for c in cuts} | {0, len(raw)})
    parts = [raw[a:b] for a, b in zip(points, points[1:], strict=False)] if not whole else [raw]
    assert _decode(parts) == expected


keys = st.sampled_from(["usage", "model", "choices", "u", "usagex", "xusage", "mode", "data"])
values = st.recursive(
    st.none() | st.integers(-5, 5) | st.text(max_size=8) | keys,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
    max_leaves=8,
)


def _has_key(obj: Any, key: str) -> bool:
    if isinstance(obj, dict):
        return key in obj or any(_has_key(v, key) for v in obj.values())
    return isinstance(obj, list) and any(_has_key(v, key) for v in obj)


@settings(max_examples=300)
@given(obj=st.dictionaries(keys, values, max_size=4), ascii_only=st.booleans(), spaced=st.booleans())
def test_may_have_key_is_never_wrong_when_it_says_no(obj, ascii_only, spaced):
    """Whatever the writer's style (escapes, spaces), `False` means the key is nowhere in the JSON."""
    text = json.dumps(obj, ensure_ascii=ascii_only, separators=(", ", ": ") if spaced else (",", ":"))
    raw = b"data: " + text.encode() + b"\n\n"
    for key in ("usage", "model"):
        if not may_have_key(raw, f'"{key}"'.encode()):
            assert not _has_key(obj, key)
    escaped = raw.replace(b'"usage"', b'"\\u0075sage"')
    assert may_have_key(escaped, b'"usage"') or not _has_key(obj, "usage")


# -- steps -----------------------------------------------------------------------------------------


def test_usage_in_an_escaped_key_is_still_captured_and_plain_chunks_pass_untouched():
    step = UsageCapture()
    ex = _ex({"model": "m", "stream": True, "messages": []})
    step.request(ex)
    chunk = Event(b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n')
    raw = chunk.raw
    assert list(step.stream_event(ex, chunk)) == [chunk] and chunk.raw == raw and ex.usage is None
    escaped = Event(b'data: {"choices":[],"\\u0075sage":{"total_tokens":3}}\n\n')
    assert list(step.stream_event(ex, escaped)) == [] and ex.usage == {"total_tokens": 3}


def test_model_name_renames_an_escaped_key_and_leaves_chunks_without_one():
    step = ModelName()
    ex = _ex({"model": "upstream-name", "stream": True, "messages": []}, client_model="alias")
    step.request(ex)
    bare = Event(b'data: {"choices":[]}\n\n')
    assert list(step.stream_event(ex, bare)) == [bare] and bare.raw == b'data: {"choices":[]}\n\n'
    escaped = Event(b'data: {"mod\\u0065l": "upstream-name", "choices": []}\n\n')
    assert [e.json() for e in step.stream_event(ex, escaped)] == [{"model": "alias", "choices": []}]
    spaced = Event(b'data: {"model": "upstream-name", "choices": []}\n\n')
    assert orjson.loads(next(iter(step.stream_event(ex, spaced))).data) == {"model": "alias", "choices": []}


def test_sse_filter_still_judges_every_event():
    step = SSEFilter()
    ex = _ex({"model": "m", "stream": True, "messages": []})
    kept = [
        Event(b"data: [DONE]\n\n"),
        Event(b": ping\n\n"),
        Event(b'data: {"choices":[]}\n\n'),
        Event(b'data: {"error":{"message":"x"}}\n\n'),
    ]
    for event in kept:
        assert list(step.stream_event(ex, event)) == [event]
    for raw in (b"event: ping\n\n", b"data: ping\n\n", b'data: {"balance":1}\n\n', b"data: {bad\n\n"):
        assert list(step.stream_event(ex, Event(raw))) == []


# -- the tag splitter's fast path ----------------------------------------------------------------


def _slow(s: ThinkSettings) -> ThinkSettings:
    """The same settings with the fast path off: "" is in every text, so `feed` always takes the loop."""
    slow = replace(s)
    object.__setattr__(slow, "firsts", ("", ""))
    return slow


STATE = (
    "inside",
    "pending",
    "skip_ws",
    "seen_tag",
    "released",
    "holding",
    "held",
    "first_tag",
    "saw_text",
    "late",
    "late_len",
)
pieces = st.lists(
    st.sampled_from(
        ["a", "b c", " ", "\n", "<", "<th", "ink>", "</th", "think>", "<think>", "</think>", "x<y", "é", "  \n "]
    ),
    max_size=14,
)


@settings(max_examples=400)
@given(
    chunks=pieces,
    mode=st.sampled_from(["strip", "separate"]),
    inside=st.booleans(),
    hold=st.booleans(),
    late=st.booleans(),
    hold_chars=st.integers(0, 6),
)
def test_fast_path_gives_what_the_loop_gives_chunk_by_chunk(chunks, mode, inside, hold, late, hold_chars):
    s = ThinkSettings(mode, START, END)
    plan = Plan(inside=inside, hold=hold, soft=late, hold_chars=hold_chars, hold_seconds=60.0, clock=lambda: 0.0)
    fast = TagSplitter(s, plan, late=late)
    slow = TagSplitter(_slow(s), plan, late=late)
    for chunk in chunks:
        assert fast.feed(chunk) == slow.feed(chunk), chunk
        assert [getattr(fast, k) for k in STATE] == [getattr(slow, k) for k in STATE]
    assert fast.finish(completed=True) == slow.finish(completed=True)

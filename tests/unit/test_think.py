"""The think step alone: the tag splitter, then the transform on hand-made exchanges (no Flask, no network)."""

from __future__ import annotations

import copy
import re
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from app.config import Config
from app.exchange import Exchange
from app.model_params import parse_llm_params
from app.sse import Event
from app.transforms.think import TagSplitter, Think, ThinkSettings, split_text
from tests.fakes.openai_upstream import chat_chunk, chat_completion

START, END = "<think>", "</think>"
STRIP = ThinkSettings("strip", START, END)
SEPARATE = ThinkSettings("separate", START, END)


def run(chunks: list[str], s: ThinkSettings = SEPARATE) -> tuple[str, str]:
    """Feed `chunks` to one splitter, then finish: (answer, reasoning) as the client would see them."""
    splitter = TagSplitter(s)
    answer = reasoning = ""
    for chunk in chunks:
        a, r = splitter.feed(chunk)
        answer, reasoning = answer + a, reasoning + r
    a, r = splitter.finish()
    return answer + a, reasoning + r


# -- the splitter ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "chunks, expected",
    [
        (["plain answer"], ("plain answer", "")),
        (["<think>why</think>\n\nanswer"], ("answer", "why")),
        (["<th", "ink>why</th", "ink>answer"], ("answer", "why")),
        (["A<think>1</think>B<think>2</think>C"], ("ABC", "12")),
        (["<think>unclosed"], ("", "unclosed")),
        (["<think>r</think>", " \n", "  ", "x  y"], ("x  y", "r")),
        (["a<think>b<think>c</think>d"], ("ad", "bc")),  # no nesting: an inner start tag is dropped
        (["<think>r</think>a</think> b"], ("ab", "r")),  # a stray end tag later is dropped
    ],
)
def test_splitter_examples(chunks, expected):
    assert run(chunks) == expected


def test_lookalikes_are_released_as_soon_as_they_cannot_be_a_tag():
    splitter = TagSplitter(STRIP)
    assert splitter.feed("a <") == ("a ", "")
    assert splitter.pending == "<"
    assert splitter.feed(" b") == ("< b", "")
    assert splitter.feed("<th") == ("", "")
    assert splitter.feed("x") == ("<thx", "")
    assert splitter.feed("x</thi") == ("x", "")
    assert splitter.finish() == ("</thi", "")


def test_held_back_text_never_exceeds_a_tag_prefix():
    splitter = TagSplitter(SEPARATE)
    for piece in ["<", "/", "t", "h", "i", "n", "k", "x", "<th", "<think", "</think", "ab<"] * 50:
        splitter.feed(piece)
        assert len(splitter.pending) < len(END)


@pytest.mark.parametrize("start, end", [("<thinking>", "</thinking>"), ("◁think▷", "◁/think▷")])
def test_custom_tags(start, end):
    s = ThinkSettings("separate", start, end)
    text = f"{start}deep{end}\nshallow"
    assert split_text(s, text) == ("shallow", "deep")
    assert run([text[:3], text[3:9], text[9:]], s) == ("shallow", "deep")


def test_strip_drops_an_unclosed_block_and_separate_flushes_it():
    assert split_text(STRIP, "ok<think>never closed")[0] == "ok"
    assert split_text(SEPARATE, "ok<think>never closed") == ("ok", "never closed")


def test_prefilled_start_tag_every_choice_starts_inside():
    s = replace(SEPARATE, prefilled=True)
    assert run(["Let me", " see.", "</think>", "\n\nAnswer"], s) == ("Answer", "Let me see.")
    assert run(["<think>\nhm</think>A"], s) == ("A", "\nhm"), "a start tag the model writes anyway is absorbed"
    assert run(["no end tag"], s) == ("", "no end tag")


def test_orphan_end_tag_without_prefill_is_decided_on_unsent_text_only():
    """Documented rule: before any tag, text not yet sent in front of an end tag is reasoning;
    text already sent stays an answer (it cannot be taken back), only the tag goes."""
    assert split_text(SEPARATE, "R1 thinks</think> answer") == ("answer", "R1 thinks")
    assert run(["R1 thinks</think>", " answer"]) == ("answer", "R1 thinks")
    assert run(["\n", "R1 thinks</think>answer"]) == ("\nanswer", "R1 thinks"), "whitespace sent does not count"
    assert run(["R1 thinks", "</think>answer"]) == ("R1 thinksanswer", "")


# -- property: chunking never changes the result ----------------------------------------------

PIECES = ["<think>", "</think>", "a", "b", " ", "\n", "<", "</", "<th", "<thx", "think>", "nk>", ">", "é", "x < y"]
texts = st.lists(st.sampled_from(PIECES), max_size=14).map("".join)


def _cuts(text: str, points: list[int]) -> list[str]:
    cuts = sorted({min(p, len(text)) for p in points})
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]


def _head_is_orphan(text: str) -> bool:
    """The first tag is an end tag: the one case whose result depends on what was sent already."""
    j = text.find(END)
    return j >= 0 and not (0 <= text.find(START) < j)


@settings(max_examples=150, deadline=None)
@given(
    text=texts,
    points=st.lists(st.integers(0, 80), max_size=12),
    mode=st.sampled_from(["strip", "separate"]),
    prefilled=st.booleans(),
)
def test_any_chunking_gives_the_unsplit_result(text, points, mode, prefilled):
    assume(prefilled or not _head_is_orphan(text))
    s = ThinkSettings(mode, START, END, prefilled=prefilled)
    whole = run([text], s)
    for i in range(len(text) + 1):
        assert run([text[:i], text[i:]], s) == whole, f"split at {i}"
    assert run(_cuts(text, points), s) == whole
    assert run(list(text), s) == whole, "one character at a time"


plain = (
    st.lists(st.sampled_from(["a", "b", " ", "\n", "<", "<th", "<thx", "</thi", "think>", ">", "é"]), max_size=5)
    .map("".join)
    .filter(lambda t: START not in t and END not in t)
)


@settings(max_examples=150, deadline=None)
@given(
    parts=st.lists(st.tuples(plain, plain), max_size=4),
    tail=plain,
    unclosed=st.booleans(),
    points=st.lists(st.integers(0, 80), max_size=8),
)
def test_well_formed_blocks_match_a_regex_reference(parts, tail, unclosed, points):
    """answer<think>why</think>answer... : strip/separate agree with a regex over the whole text."""
    text = "".join(f"{a}{START}{r}{END}" for a, r in parts) + tail + (f"{START}{tail}" if unclosed else "")
    assume(_head_is_orphan(text) is False)
    answer = re.sub(f"{START}.*?({END}\\s*|\\Z)", "", text, flags=re.S)
    reasoning = "".join(m.group(1) for m in re.finditer(f"{START}(.*?)(?:{END}|\\Z)", text, flags=re.S))
    chunks = _cuts(text, points)
    assert run(chunks, SEPARATE) == (answer, reasoning)
    assert run(chunks, STRIP)[0] == answer


# -- the transform on hand-made exchanges ---------------------------------------------------------


def _exchange(family: str = "chat", model: str | None = "m", stream: bool = True) -> Exchange:
    body: dict[str, Any] = {"model": model, "stream": stream}
    return Exchange(
        "req-1", family, "POST", f"{family.replace('chat', 'chat/completions')}", body=body, client_model=model
    )


def _bound(config: Config, ex: Exchange) -> Think:
    think = Think(config)
    assert think.applies(ex)
    return think


def _stream(think: Think, ex: Exchange, chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[Event] = []
    for chunk in chunks:
        out.extend(think.stream_event(ex, Event.from_json(copy.deepcopy(chunk))))  # hooks edit in place
    out.extend(think.stream_end(ex))
    return [e.json() for e in out]


def _text(out: list[dict[str, Any]], key: str = "content", index: int = 0) -> str:
    return "".join(c["delta"].get(key) or "" for o in out for c in o["choices"] if c["index"] == index)


THINKING = [
    chat_chunk(role="assistant", content=""),
    chat_chunk("<th"),
    chat_chunk("ink>plan"),
    chat_chunk(" more</thi"),
    chat_chunk("nk>\n\n"),
    chat_chunk("Answer"),
    chat_chunk(finish="stop"),
]


def test_stream_strip_drops_emptied_chunks_and_keeps_role_and_finish():
    ex = _exchange()
    out = _stream(_bound(Config(), ex), ex, THINKING)
    assert _text(out) == "Answer"
    assert out[0]["choices"][0]["delta"]["role"] == "assistant"
    assert out[-1]["choices"][0]["finish_reason"] == "stop"
    assert len(out) == 3, "role, answer, finish: the chunks that held only reasoning are gone"
    assert all(o["object"] == "chat.completion.chunk" and o["model"] == "fake-model" for o in out)


@pytest.mark.parametrize(
    "field, keys",
    [
        ("reasoning_content", ["reasoning_content"]),
        ("reasoning", ["reasoning"]),
        ("both", ["reasoning_content", "reasoning"]),
    ],
)
def test_stream_separate_puts_reasoning_in_the_configured_field(field, keys):
    ex = _exchange()
    out = _stream(_bound(Config(think_mode="separate", reasoning_field=field), ex), ex, THINKING)
    assert _text(out) == "Answer"
    for key in keys:
        assert _text(out, key) == "plan more"
    assert {"reasoning", "reasoning_content"} - set(keys) == {
        k for k in ("reasoning", "reasoning_content") if not _text(out, k)
    }


def test_untouched_events_pass_byte_for_byte():
    ex = _exchange()
    think = _bound(Config(), ex)
    event = Event.from_json(chat_chunk("plain"))
    raw = event.raw
    assert list(think.stream_event(ex, event)) == [event] and event.raw == raw
    usage = Event.from_json({"id": "x", "object": "chat.completion.chunk", "choices": [], "usage": {"total_tokens": 1}})
    assert list(think.stream_event(ex, usage)) == [usage]
    assert list(think.stream_event(ex, Event.from_data("[DONE]")))[0].is_done


def test_tool_call_deltas_are_untouched():
    ex = _exchange()
    think = _bound(Config(), ex)
    call = chat_chunk(
        tool_calls=[
            {"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"x":"<think>"}'}}
        ]
    )
    event = Event.from_json(call)
    assert list(think.stream_event(ex, event)) == [event]
    assert event.json()["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"] == '{"x":"<think>"}'


def test_n_greater_than_one_keeps_state_per_choice():
    ex = _exchange()
    think = _bound(Config(think_mode="separate"), ex)
    chunks = [
        chat_chunk("<think>zero", index=0),
        chat_chunk("one <th", index=1),
        chat_chunk("</think>A0", index=0),
        chat_chunk("ink>r1</think>A1", index=1),
        chat_chunk(finish="stop", index=0),
        chat_chunk(finish="stop", index=1),
    ]
    out = _stream(think, ex, chunks)
    assert (_text(out, index=0), _text(out, "reasoning_content", 0)) == ("A0", "zero")
    assert (_text(out, index=1), _text(out, "reasoning_content", 1)) == ("one A1", "r1")


def test_held_back_prefix_is_flushed_with_finish_reason_or_at_the_end():
    ex = _exchange()
    out = _stream(_bound(Config(), ex), ex, [chat_chunk("a <"), chat_chunk(finish="stop")])
    assert [c["choices"][0]["delta"].get("content") for c in out] == ["a ", "<"]
    assert out[-1]["choices"][0]["finish_reason"] == "stop"
    ex = _exchange()
    out = _stream(_bound(Config(), ex), ex, [chat_chunk("a </thi")])  # stream cut short: no finish_reason
    assert _text(out) == "a </thi" and out[-1]["id"] == "chatcmpl-fake"


def test_unclosed_block_at_the_end_strip_drops_separate_flushes():
    chunks = [chat_chunk("ok<think>still going")]
    ex = _exchange()
    assert _text(_stream(_bound(Config(), ex), ex, chunks)) == "ok"
    ex = _exchange()
    out = _stream(_bound(Config(think_mode="separate"), ex), ex, chunks)
    assert (_text(out), _text(out, "reasoning_content")) == ("ok", "still going")


def test_upstream_reasoning_fields_strip_drops_separate_normalises():
    chunks = [
        chat_chunk(role="assistant", content="", reasoning="why"),
        chat_chunk(content=None, reasoning=" so"),
        chat_chunk("A", reasoning_content=None),
        chat_chunk(finish="stop"),
    ]
    ex = _exchange()
    out = _stream(_bound(Config(), ex), ex, chunks)
    assert _text(out) == "A" and not any("reasoning" in c["delta"] for o in out for c in o["choices"])
    assert len(out) == 3, "the reasoning-only chunk without a role is dropped"
    ex = _exchange()
    out = _stream(_bound(Config(think_mode="separate"), ex), ex, chunks)
    assert _text(out, "reasoning_content") == "why so"
    assert not any("reasoning" in c["delta"] for o in out for c in o["choices"])


def test_keep_does_not_apply_and_per_model_settings_win():
    table = parse_llm_params(
        "model=r1,think_mode=separate,think_prefilled=true;model=raw,think_mode=keep;"
        "model=kimi,think_tag_start=◁think▷,think_tag_end=◁/think▷"
    )
    config = Config(think_mode="strip", llm_params=table)
    think = Think(config)
    assert not think.applies(_exchange(model="raw"))
    assert not Think(Config(think_mode="keep")).applies(_exchange())
    assert not think.applies(_exchange(family="embeddings"))
    ex = _exchange(model="r1")
    out = _stream(_bound(config, ex), ex, [chat_chunk("thinking"), chat_chunk("</think>A")])
    assert (_text(out), _text(out, "reasoning_content")) == ("A", "thinking")
    ex = _exchange(model="kimi")
    assert _text(_stream(_bound(config, ex), ex, [chat_chunk("◁think▷x◁/think▷K")])) == "K"


def test_non_streamed_chat_and_completions():
    body = chat_completion("<think>why</think>\n\nbecause", reasoning="upstream ")
    ex = _exchange(stream=False)
    out = _bound(Config(think_mode="separate"), ex).response_json(ex, body)
    assert out["choices"][0]["message"] == {
        "role": "assistant",
        "content": "because",
        "reasoning_content": "upstream why",
    }
    ex = _exchange(stream=False)
    out = _bound(Config(), ex).response_json(ex, chat_completion("<think>why</think>because", reasoning="x"))
    assert out["choices"][0]["message"] == {"role": "assistant", "content": "because"}
    ex = _exchange(family="completions", stream=False)
    body = {"object": "text_completion", "choices": [{"index": 0, "text": "r</think> t", "finish_reason": "stop"}]}
    out = _bound(Config(think_mode="separate"), ex).response_json(ex, body)
    assert out["choices"][0]["text"] == "t" and out["choices"][0]["reasoning_content"] == "r"


def test_streamed_completions_keep_text_and_drop_emptied_chunks():
    ex = _exchange(family="completions")
    base = {"id": "cmpl", "object": "text_completion", "created": 1, "model": "m"}
    chunks = [
        {**base, "choices": [{"index": 0, "text": t, "logprobs": None, "finish_reason": f}]}
        for t, f in [("<think>r", None), ("</think>", None), ("Hi", None), ("", "stop")]
    ]
    out = _stream(_bound(Config(), ex), ex, chunks)
    assert [c["choices"][0]["text"] for c in out] == ["Hi", ""]

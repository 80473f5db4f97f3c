"""think_prefilled=auto: request signals, the hold at the start of a stream, learning, per choice.

The think step on hand-made exchanges (no Flask, no network), with an in-memory store and a
clock the test controls. Hypothesis splits each answer into SSE chunks at every position, so
tags are split across chunks too.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.config import Config
from app.envparse import ConfigError
from app.exchange import Exchange
from app.model_params import HOLD_CHARS, HOLD_MS, ParamsError, PrefillHold, parse_llm_params
from app.sse import Event
from app.transforms.prefill import PrefillStore
from app.transforms.think import TagSplitter, Think, ThinkSettings, request_signal
from tests.fakes.openai_upstream import chat_chunk, chat_completion

START, END = "<think>", "</think>"
MODEL = "deepseek-r1"  # matches THINK_PREFILL_HOLD_MODELS
HOLD = 64
CONFIG = Config(prefill_hold=PrefillHold(chars=HOLD))
SEPARATE = Config(think_mode="separate", prefill_hold=PrefillHold(chars=HOLD))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def think_for(config: Config = CONFIG, store: PrefillStore | None = None, clock: Clock | None = None) -> Think:
    return Think(config, store=store if store is not None else PrefillStore(), clock=clock or Clock())


def exchange(model: str | None = MODEL, stream: bool = True, family: str = "chat", **body: Any) -> Exchange:
    payload: dict[str, Any] = {"model": model, "stream": stream, **body}
    if family == "chat":
        payload.setdefault("messages", [{"role": "user", "content": "2+2?"}])
    return Exchange(
        "req",
        family,
        "POST",
        "chat/completions" if family == "chat" else "completions",
        body=payload,
        client_model=model,
    )


def begin(think: Think, ex: Exchange) -> None:
    assert think.applies(ex)
    think.response_headers(ex, 200, {})  # as the relay does: the plan is made here


class Run:
    """One streamed request through the step: feed chunks, see what the client gets."""

    def __init__(self, think: Think, ex: Exchange | None = None) -> None:
        self.think = think
        self.ex = ex if ex is not None else exchange()
        begin(think, self.ex)
        self.out: list[dict[str, Any]] = []

    def send(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        got = [e.json() for e in self.think.stream_event(self.ex, Event.from_json(copy.deepcopy(chunk)))]
        self.out.extend(got)
        return got

    def end(self) -> None:
        self.out.extend(e.json() for e in self.think.stream_end(self.ex))

    def text(self, key: str = "content", index: int = 0) -> str:
        return "".join(c["delta"].get(key) or "" for o in self.out for c in o["choices"] if c["index"] == index)


def stream(think: Think, pieces: list[str], model: str = MODEL, finish: str | None = "stop") -> Run:
    run = Run(think, exchange(model))
    run.send(chat_chunk(role="assistant", content=""))
    for piece in pieces:
        run.send(chat_chunk(piece))
    if finish is not None:
        run.send(chat_chunk(finish=finish))
    run.end()
    return run


def cuts(text: str, points: list[int]) -> list[str]:
    marks = sorted({min(p, len(text)) for p in points})
    return [p for p in (text[a:b] for a, b in zip([0, *marks], [*marks, len(text)], strict=True)) if p]


def splits(text: str) -> list[list[str]]:
    """The text as two chunks, at every position (tags end up split across chunks too)."""
    return [[p for p in (text[:i], text[i:]) if p] for i in range(len(text) + 1)]


# -- parsing ---------------------------------------------------------------------------------------------


def test_llm_params_think_prefilled_auto_true_false():
    table = parse_llm_params("model=a,think_prefilled=auto;model=b,think_prefilled=true;model=c,think_prefilled=FALSE")
    assert [table.lookup(m).think_prefilled for m in "abc"] == [None, True, False]
    with pytest.raises(ParamsError, match="use auto, true or false"):
        parse_llm_params("model=a,think_prefilled=maybe")
    think = Think(Config(llm_params=table), store=PrefillStore())
    assert [think.settings_for(m).auto for m in ("a", "b", "c", "unlisted")] == [True, False, False, True]


def test_config_file_think_prefilled(tmp_path):
    from app.routing.settings import RoutingConfigError, load

    path = tmp_path / "config.yaml"
    path.write_text(
        "providers: {p: {base_url: 'http://127.0.0.1:9/v1'}}\n"
        "models:\n  r1: {provider: p, think_prefilled: true}\n  q: {provider: p, think_prefilled: auto}\n"
        "  n: {provider: p, think_prefilled: false, think_mode: separate}\n"
    )
    routing = load(
        {"COT_PROXY_CONFIG": str(path)}, target_base_url=None, upstream_api_key=None, connect_timeout=1, read_timeout=1
    )
    assert [routing.models[m].think_prefilled for m in ("r1", "q", "n")] == [True, None, False]
    think = Think(
        Config(routing=routing, llm_params=parse_llm_params("model=r1,think_prefilled=false")), store=PrefillStore()
    )
    assert think.settings_for("r1").prefilled is False, "LLM_PARAMS wins over the file"
    assert think.settings_for("n").prefilled is False and not think.settings_for("n").auto
    assert think.settings_for("q").auto
    path.write_text("providers: {p: {base_url: 'http://127.0.0.1:9/v1'}}\nmodels:\n  r1: {think_prefilled: 2}\n")
    with pytest.raises(RoutingConfigError, match=r"models\.r1\.think_prefilled: must be auto, true or false"):
        load(
            {"COT_PROXY_CONFIG": str(path)},
            target_base_url=None,
            upstream_api_key=None,
            connect_timeout=1,
            read_timeout=1,
        )


def test_hold_settings_from_the_environment():
    think = Think(Config(), store=PrefillStore())
    assert (think.hold_chars, think.hold_seconds) == (HOLD_CHARS, HOLD_MS / 1000)
    think = Think(
        Config.from_env(
            {"THINK_PREFILL_HOLD_CHARS": "10", "THINK_PREFILL_HOLD_MS": "20", "THINK_PREFILL_HOLD_MODELS": "*"}
        ),
        store=PrefillStore(),
    )
    assert (think.hold_chars, think.hold_seconds, think.hold_models.pattern) == (10, 0.02, ".*")
    assert think.hold_models.search("any-model")


@pytest.mark.parametrize(
    "bad", [{"THINK_PREFILL_HOLD_CHARS": "x"}, {"THINK_PREFILL_HOLD_MS": "-1"}, {"THINK_PREFILL_HOLD_MODELS": "("}]
)
def test_a_bad_hold_setting_stops_start_up_naming_it(bad):
    """Read by Config.from_env, which the Gunicorn master runs: one line, before any worker starts."""
    with pytest.raises(ConfigError, match=next(iter(bad))):
        Config.from_env(bad)


# -- request signals -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, family, expected",
    [
        (
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "<think>\n"}]},
            "chat",
            "assistant_prefill",
        ),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "content": [{"type": "text", "text": "x"}, {"type": "text", "text": "ok <think>"}],
                    }
                ]
            },
            "chat",
            "assistant_prefill",
        ),
        ({"messages": [{"role": "assistant", "content": "<think>done</think>"}]}, "chat", None),
        ({"messages": [{"role": "user", "content": "<think>"}]}, "chat", None),
        ({"prompt": "User: hi\nAssistant: <think>\n"}, "completions", "assistant_prefill"),
        ({"prompt": ["a<think>", "b<think>"]}, "completions", "assistant_prefill"),
        ({"prompt": ["a<think>", "b"]}, "completions", None),
        ({"messages": [], "chat_template_kwargs": {"enable_thinking": False}}, "chat", "no_thinking"),
        ({"messages": [], "chat_template_kwargs": {"thinking": False}}, "chat", "no_thinking"),
        ({"messages": [], "chat_template_kwargs": {"enable_thinking": True}}, "chat", None),
        ({"messages": [], "enable_thinking": False}, "chat", "no_thinking"),
        ({"messages": "not a list", "chat_template_kwargs": "nor a dict"}, "chat", None),
    ],
)
def test_request_signals(body, family, expected):
    ex = Exchange("r", family, "POST", "x", body=body)
    assert request_signal(ex, START) == expected


def test_assistant_prefill_starts_inside_and_teaches_nothing():
    store = PrefillStore()
    think = think_for(store=store)
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "<think>\n"}]
    run = Run(think, exchange(messages=msgs))
    for piece in ["a long line of reasoning " * 10, "</think>", "\n\nA"]:
        run.send(chat_chunk(piece))
    run.send(chat_chunk(finish="stop"))
    assert run.text() == "A"
    assert store.get(MODEL) is None, "the client pre-filled, not the template"


def test_enable_thinking_false_holds_nothing_and_teaches_nothing():
    store = PrefillStore()
    think = think_for(store=store)
    run = Run(think, exchange(chat_template_kwargs={"enable_thinking": False}))
    assert run.send(chat_chunk("Hi"))[0]["choices"][0]["delta"]["content"] == "Hi", "sent at once"
    run.send(chat_chunk(finish="stop"))
    assert store.get(MODEL) is None


def test_upstream_reasoning_fields_end_the_hold():
    store = PrefillStore()
    think = think_for(store=store)
    run = Run(think)
    assert run.send(chat_chunk("Hel")) == [], "held: the model is not known yet"
    got = run.send(chat_chunk("lo", reasoning_content="why"))
    assert got[0]["choices"][0]["delta"]["content"] == "Hello", "the upstream splits reasoning: no guessing"
    assert run.send(chat_chunk(" there"))[0]["choices"][0]["delta"]["content"] == " there"
    run.send(chat_chunk(finish="stop"))
    assert store.get(MODEL) is False


# -- the hold --------------------------------------------------------------------------------------------


def test_the_issue_example_does_not_leak_on_the_first_stream():
    store = PrefillStore()
    pieces = ["deep", " thoughts", " here", "</think>", "  The", " answer", " is", " 4."]
    for mode in ("strip", "separate"):
        think = think_for(Config(think_mode=mode), store=PrefillStore())
        run = stream(think, pieces)
        assert run.text() == "The answer is 4."
        assert run.text("reasoning_content") == ("deep thoughts here" if mode == "separate" else "")
    think = think_for(store=store)
    stream(think, pieces)
    assert store.get(MODEL) is True
    long = ["a" * 40] * 20 + ["</think>", "The answer is 4."]
    assert stream(think, long).text() == "The answer is 4.", "known: even long reasoning does not leak"


def test_hold_is_bounded_in_characters():
    think = think_for()
    run = Run(think)
    sent = ""
    for i in range(40):
        run.send(chat_chunk("word "))
        sent += "word "
        assert len(sent) - len(run.text()) <= HOLD, f"more than {HOLD} characters held after chunk {i}"
    assert run.text() == sent


def test_hold_is_bounded_in_time():
    clock = Clock()
    think = think_for(clock=clock)
    run = Run(think)
    assert run.send(chat_chunk("Hi")) == []
    clock.now += HOLD_MS / 1000 * 0.99
    assert run.send(chat_chunk(" there")) == []
    clock.now += HOLD_MS / 1000 * 0.02
    assert run.send(chat_chunk("!"))[0]["choices"][0]["delta"]["content"] == "Hi there!"
    assert run.send(chat_chunk(" more"))[0]["choices"][0]["delta"]["content"] == " more", "no hold after it"
    clock.now += 10
    run.send(chat_chunk("</think>late"))
    assert run.text() == "Hi there! morelate", "text already sent stays an answer"


def test_known_not_prefilled_and_unmatched_names_are_not_held():
    store = PrefillStore()
    think = think_for(store=store)
    stream(think, ["Hello", " world"])
    assert store.get(MODEL) is False
    run = Run(think)
    assert run.send(chat_chunk("Hello"))[0]["choices"][0]["delta"]["content"] == "Hello"
    run = Run(think, exchange("m"))
    assert run.send(chat_chunk("Hello"))[0]["choices"][0]["delta"]["content"] == "Hello", "name not matched"
    run.send(chat_chunk(finish="stop"))
    assert store.get("m") is False, "learned all the same"
    think = think_for(Config.from_env({"THINK_PREFILL_HOLD_MODELS": ".*"}))
    assert Run(think, exchange("m")).send(chat_chunk("Hello")) == [], "THINK_PREFILL_HOLD_MODELS=.* holds all"
    think = think_for(Config.from_env({"THINK_PREFILL_HOLD_MS": "0"}))
    assert Run(think).send(chat_chunk("Hello")) != [], "THINK_PREFILL_HOLD_MS=0: no hold"


def test_alias_matched_by_the_model_sent_upstream():
    think = think_for()
    ex = exchange("smart")
    ex.body["model"] = "deepseek-ai/DeepSeek-R1-Distill-Qwen-14B"  # what the router sent
    run = Run(think, ex)
    assert run.send(chat_chunk("Hello")) == []


def test_held_text_is_flushed_at_the_end_of_a_stream_without_finish_reason():
    think = think_for()
    run = stream(think, ["Hello", " there <"], finish=None)
    assert run.text() == "Hello there <"


def test_configured_models_do_not_hold_or_learn():
    store = PrefillStore()
    table = parse_llm_params(f"model={MODEL},think_prefilled=false;model=r1,think_prefilled=true")
    think = think_for(Config(llm_params=table), store=store)
    run = Run(think)
    assert run.send(chat_chunk("x"))[0]["choices"][0]["delta"]["content"] == "x"
    run.send(chat_chunk("</think>y"))
    assert store.get(MODEL) is None
    assert stream(think, ["plain"], model="r1").text() == "", "true: inside, as before"


def test_no_response_headers_means_the_old_behaviour():
    """A hand-made exchange that skips response_headers (tests/unit/test_think.py) keeps the settings alone."""
    think = think_for()
    ex = exchange()
    assert think.applies(ex)
    event = Event.from_json(chat_chunk("plain"))
    assert list(think.stream_event(ex, event)) == [event]


# -- learned pre-fill: a model that stops pre-filling -------------------------------------------------------


def test_learned_prefill_strip_gives_back_an_untagged_answer_at_the_end():
    store = PrefillStore()
    store.learn(MODEL, True)
    think = think_for(store=store)
    run = stream(think, ["Hello", " there"])
    assert run.text() == "Hello there", "no tag at all: it was the answer"
    assert store.get(MODEL) is False
    store.learn(MODEL, True)
    assert stream(think, ["reasoning cut short"], finish="length").text() == "", "length: reasoning, dropped"
    assert store.get(MODEL) is True, "a cut-short answer teaches nothing"


def test_learned_prefill_json_without_end_tag_is_an_answer():
    store = PrefillStore()
    store.learn(MODEL, True)
    think = think_for(store=store)
    for text, expected in [("plain answer", "plain answer"), ("why</think>\n\nA", "A"), ("a<think>b</think>c", "c")]:
        ex = exchange(stream=False)
        begin(think, ex)
        store.learn(MODEL, True)
        out = think.response_json(ex, chat_completion(text))
        assert out["choices"][0]["message"]["content"] == expected


def test_json_answers_teach_the_store():
    store = PrefillStore()
    think = think_for(store=store)
    for text, learned in [
        ("why</think>A", True),
        ("<think>w</think>A", False),
        ("just text", False),
        ("why</think>A", True),
    ]:
        ex = exchange(stream=False)
        begin(think, ex)
        think.response_json(ex, chat_completion(text))
        assert store.get(MODEL) is learned
    ex = exchange(stream=False)
    begin(think, ex)
    body = chat_completion("")
    think.response_json(ex, body)
    assert store.get(MODEL) is True, "an empty answer teaches nothing"


def test_completions_stream_prefilled():
    store = PrefillStore()
    think = think_for(store=store)
    ex = exchange(family="completions", prompt="Q: 2+2?")
    begin(think, ex)
    base = {"id": "c", "object": "text_completion", "created": 1, "model": MODEL}
    out = []
    for text, finish in [("hm", None), (" ok</thi", None), ("nk> 4", None), ("", "stop")]:
        chunk = {**base, "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]}
        out += [e.json() for e in think.stream_event(ex, Event.from_json(chunk))]
    assert "".join(c["text"] for o in out for c in o["choices"]) == "4"
    assert store.get(MODEL) is True


# -- properties: every split position ------------------------------------------------------------------------

ALPHABET = st.sampled_from(["a", "b", " ", "\n", "<", "</", "<th", "</thi", "think>", ">", "é", "x < y"])
reasoning_text = (
    st.lists(ALPHABET, min_size=1, max_size=10)
    .map("".join)
    .filter(
        lambda t: (
            START not in t
            and END not in t
            and not t.endswith(
                ("<", "</", "<t", "<th", "<thi", "<thin", "<think", "</t", "</th", "</thi", "</thin", "</think")
            )
            and len(t) <= HOLD
            and t.strip() != ""
        )
    )
)
answer_text = (
    st.lists(ALPHABET, min_size=1, max_size=8)
    .map(lambda parts: "A" + "".join(parts))
    .filter(lambda t: START not in t and END not in t)
)
gap = st.sampled_from(["", " ", "\n\n"])


def expected(kind: str, r: str, a: str) -> tuple[str, str]:
    return (a, "" if kind == "plain" else r)


def text_of(kind: str, r: str, ws: str, a: str) -> str:
    if kind == "prefilled":
        return r + END + ws + a
    if kind == "explicit":
        return START + r + END + ws + a
    return a


@settings(max_examples=60, deadline=None)
@given(r=reasoning_text, ws=gap, a=answer_text, known=st.sampled_from([None, True]))
def test_prefilled_at_every_split(r, ws, a, known):
    text = text_of("prefilled", r, ws, a)
    for pieces in [*splits(text), list(text)]:
        store = PrefillStore()
        if known is not None:
            store.learn(MODEL, known)
        run = stream(think_for(SEPARATE, store=store), pieces)
        assert (run.text(), run.text("reasoning_content")) == (a, r), pieces
        assert store.get(MODEL) is True


@settings(max_examples=60, deadline=None)
@given(r=reasoning_text, ws=gap, a=answer_text, known=st.sampled_from([None, True, False]))
def test_explicit_start_tag_at_every_split(r, ws, a, known):
    text = text_of("explicit", r, ws, a)
    for pieces in [*splits(text), list(text)]:
        store = PrefillStore()
        if known is not None:
            store.learn(MODEL, known)
        run = stream(think_for(SEPARATE, store=store), pieces)
        assert (run.text(), run.text("reasoning_content")) == (a, r), pieces
        assert store.get(MODEL) is False


@settings(max_examples=60, deadline=None)
@given(
    a=st.lists(ALPHABET, min_size=1, max_size=30).map("".join).filter(lambda t: START not in t and END not in t),
    known=st.sampled_from([None, False]),
    points=st.lists(st.integers(0, 120), max_size=10),
)
def test_no_reasoning_at_every_split(a, known, points):
    for pieces in [*splits(a), cuts(a, points), list(a)]:
        store = PrefillStore()
        if known is not None:
            store.learn(MODEL, known)
        think = think_for(store=store)
        run = Run(think)
        sent = ""
        for piece in pieces:
            run.send(chat_chunk(piece))
            sent += piece
            behind = len(sent) - len(run.text())
            # Known not to pre-fill: only a possible tag prefix waits; unknown: at most the hold.
            assert behind <= (len(END) - 1 if known is False else HOLD + len(END) - 1), pieces
        run.send(chat_chunk(finish="stop"))
        assert run.text() == a and run.text("reasoning_content") == ""
        assert store.get(MODEL) is (False if a.strip() else known)


KINDS = st.sampled_from(["prefilled", "explicit", "plain"])


@settings(max_examples=60, deadline=None)
@given(
    answers=st.lists(
        st.tuples(KINDS, reasoning_text, gap, answer_text, st.lists(st.integers(0, 60), max_size=6)),
        min_size=1,
        max_size=6,
    )
)
def test_a_model_that_changes_behaviour(answers):
    """One store across requests: each answer is right, except that a model known not to pre-fill may leak
    once when it starts to (the reasoning text sent before the end tag came); what is known follows each answer."""
    store = PrefillStore()
    think = think_for(store=store)
    for kind, r, ws, a, points in answers:
        before = store.get(MODEL)
        run = stream(think, cuts(text_of(kind, r, ws, a), points))
        right = expected(kind, r, a)[0]
        if kind == "prefilled" and before is False:
            leaked = run.text()[: len(run.text()) - len(a)]  # what went out before the end tag came
            assert run.text().endswith(a) and r.startswith(leaked), (run.text(), r, a)
        else:
            assert run.text() == right, (kind, before)
        assert store.get(MODEL) is (kind == "prefilled")


@settings(max_examples=40, deadline=None)
@given(
    choices=st.lists(
        st.tuples(KINDS, reasoning_text, gap, answer_text, st.lists(st.integers(0, 60), max_size=5)),
        min_size=2,
        max_size=3,
    ),
    order=st.randoms(use_true_random=False),
)
def test_several_choices_each_with_its_own_state(choices, order):
    """n>1: the chunks of each choice interleaved in any order; each choice's text comes out right."""
    queues = [
        [chat_chunk(p, index=i) for p in cuts(text_of(k, r, ws, a), pts)] + [chat_chunk(finish="stop", index=i)]
        for i, (k, r, ws, a, pts) in enumerate(choices)
    ]
    run = Run(think_for(SEPARATE))
    for _ in range(sum(len(q) for q in queues)):
        pending = [q for q in queues if q]
        run.send(order.choice(pending).pop(0))
    run.end()
    for i, (k, r, _ws, a, _pts) in enumerate(choices):
        assert (run.text(index=i), run.text("reasoning_content", i)) == expected(k, r, a), (i, k)


@settings(max_examples=30, deadline=None)
@given(r=reasoning_text, ws=gap, a=answer_text)
def test_two_choices_split_at_every_position(r, ws, a):
    one, two = text_of("prefilled", r, ws, a), text_of("plain", r, ws, a)
    for i in range(len(one) + 1):
        j = (i * 7) % (len(two) + 1)
        run = Run(think_for(SEPARATE))
        for piece0, piece1 in zip([one[:i], one[i:]], [two[:j], two[j:]], strict=True):
            for index, piece in ((0, piece0), (1, piece1)):
                if piece:
                    run.send(chat_chunk(piece, index=index))
        run.send(chat_chunk(finish="stop", index=0))
        run.send(chat_chunk(finish="stop", index=1))
        assert (run.text(index=0), run.text("reasoning_content", 0)) == (a, r)
        assert (run.text(index=1), run.text("reasoning_content", 1)) == (a, "")


def test_splitter_hold_never_exceeds_its_bound():
    from app.transforms.think import Plan

    splitter = TagSplitter(
        ThinkSettings("strip", START, END, auto=True), Plan(hold=True, hold_chars=10, hold_seconds=60, clock=Clock())
    )
    for piece in ["abc", "def", "ghij"]:
        assert splitter.feed(piece) == ("", "")
        assert len(splitter.held) <= 10
    assert splitter.feed("k") == ("abcdefghijk", "")
    assert not splitter.holding

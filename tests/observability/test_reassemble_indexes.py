"""The completion recorder reassembles a stream whose tool-call indexes mix numbers and strings
(a malformed upstream) instead of failing in its done hook."""

from app.observability.reassemble import StreamReassembler


def call(index: object, name: str) -> dict:
    return {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": index, "function": {"name": name}}]}}]}


def test_mixed_tool_call_indexes_keep_numbers_first_in_order():
    r = StreamReassembler()
    for index, name in ((10, "c"), ("x", "z"), (2, "b")):
        r.feed(call(index, name))
    calls = r.result("chat")["choices"][0]["message"]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["b", "c", "z"]

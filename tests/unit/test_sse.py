"""The incremental SSE decoder: same events whatever the chunking."""

import random

import pytest

from app.sse import Event, SSEDecoder

RECORDED = (
    b'data: {"id":"1","choices":[{"delta":{"content":"Hel"}}]}\n\n'
    b": keep-alive\n\n"
    b'data: {"id":"1","choices":[{"delta":{"content":"lo \xc3\xa9"}}]}\r\n\r\n'
    b"event: message\nid: 7\ndata: line one\ndata: line two\n\n"
    b'data: {"id":"1","choices":[],"usage":{"total_tokens":3}}\r\r'
    b"data: [DONE]\n\n"
)


def decode(parts: list[bytes]) -> list[bytes]:
    decoder = SSEDecoder()
    return [e.raw for part in parts for e in decoder.feed(part)]


def datas(raws: list[bytes]) -> list[str | None]:
    return [Event(r).data for r in raws]


WHOLE = decode([RECORDED])


def test_whole_stream_events():
    assert len(WHOLE) == 6
    assert b"".join(WHOLE) == RECORDED
    assert datas(WHOLE)[3] == "line one\nline two"
    assert Event(WHOLE[3]).name == "message"
    assert Event(WHOLE[1]).is_comment and Event(WHOLE[1]).data is None
    assert Event(WHOLE[-1]).is_done
    assert Event(WHOLE[2]).json()["choices"][0]["delta"]["content"] == "lo é"


@pytest.mark.parametrize("cut", range(1, len(RECORDED)))
def test_split_at_every_offset(cut):
    got = decode([RECORDED[:cut], RECORDED[cut:]])
    assert datas(got) == datas(WHOLE)
    # No bytes invented; at most a stray \n of a \r\n split exactly at an event's end is dropped.
    assert len(b"".join(got)) in (len(RECORDED), len(RECORDED) - 1)


def test_byte_by_byte():
    assert datas(decode([bytes([b]) for b in RECORDED])) == datas(WHOLE)


def test_random_chunkings():
    rng = random.Random(1234)
    for _ in range(300):
        cuts = sorted(rng.sample(range(1, len(RECORDED)), rng.randint(1, 20)))
        parts = [RECORDED[a:b] for a, b in zip([0, *cuts], [*cuts, len(RECORDED)], strict=False)]
        assert datas(decode(parts)) == datas(WHOLE)


def test_event_released_as_soon_as_complete():
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n") == []
    assert [e.data for e in decoder.feed(b"\ndata: b")] == ["a"]
    assert decoder.pending() == b"data: b"
    # A lone \r ends the line at once; the event completes without waiting for a \n.
    assert [e.data for e in decoder.feed(b"\r\r")] == ["b"]
    assert [e.data for e in decoder.feed(b"\ndata: c\n\n")] == ["c"]


def test_set_json_reserialises():
    e = Event(b'data: {"a": 1}\n\n')
    obj = e.json()
    obj["a"] = 2
    e.set_json(obj)
    assert e.raw == b'data: {"a":2}\n\n'


def test_non_json_data():
    assert Event(b"data: ping\n\n").json() is None
    assert Event(b"data: {broken\n\n").json() is None
    assert Event(b"data: [DONE]\n\n").json() is None
    assert Event(b"data: [DONE]\n\n").is_done


def test_json_that_is_not_utf8_is_read_as_data_reads_it():
    """Invalid bytes become U+FFFD, as `data` decodes them; the JSON is not lost."""
    e = Event(b'data: {"content":"caf\xe9"}\n\n')
    assert e.json() == {"content": "caf\ufffd"}
    assert Event(b"data: [1, 2, 3]\n\n").json() == [1, 2, 3]

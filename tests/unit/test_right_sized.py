"""What stays referenced while an answer streams, or while a response is stored, is no larger than its bytes.

orjson (3.12 on) returns its output inside its write buffer: 4 KiB or more whatever the output's length.
"""

from __future__ import annotations

import tracemalloc

from app.body import dump_json, right_sized
from app.translate.store import MemoryResponseStore

BODY = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "x" * 1000}]}


def traced(make, n: int = 200) -> float:
    """Bytes allocated per object `make` returns, while all of them are kept."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        kept = [make() for _ in range(n)]
        per = (tracemalloc.get_traced_memory()[0] - base) / n
    finally:
        tracemalloc.stop()
    assert len(kept) == n
    return per


def test_the_relayed_body_takes_its_own_size():
    raw = dump_json(BODY)
    assert raw == right_sized(raw)
    assert traced(lambda: dump_json(BODY)) < len(raw) + 200


def test_a_stored_response_takes_its_own_size():
    store = MemoryResponseStore(max_items=10_000)
    record = {"response": {"id": "r", "output": "y" * 300}}
    count = iter(range(10_000))
    per = traced(lambda: store.put(f"resp_{next(count)}", "alice", record))
    assert per < 1200  # about 330 bytes of JSON, the entry and its key; orjson's buffer alone is 4 KiB

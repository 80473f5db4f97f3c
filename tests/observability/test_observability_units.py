"""Small pure parts: Accept negotiation, stream reassembly, file rotation, secret masking."""

from __future__ import annotations

import json
import threading

from app.observability.exposition import wants_json
from app.observability.logformat import mask_secrets
from app.observability.reassemble import StreamReassembler
from app.observability.sinks import JsonlFileSink
from app.redact import hint


def test_json_only_when_asked():
    assert wants_json("application/json")
    assert wants_json("application/json, text/plain;q=0.5")
    assert not wants_json("")
    assert not wants_json("*/*")
    assert not wants_json("text/plain;version=0.0.4;q=1,*/*;q=0.1")  # Prometheus
    assert not wants_json("application/openmetrics-text;version=1.0.0,application/json;q=0.5")
    assert wants_json("", "format=json")


def test_completions_stream_and_several_choices():
    r = StreamReassembler()
    base = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m"}
    r.feed(
        {
            **base,
            "choices": [
                {"index": 1, "text": "B", "finish_reason": None},
                {"index": 0, "text": "A", "finish_reason": None},
            ],
        }
    )
    r.feed(
        {
            **base,
            "choices": [
                {"index": 0, "text": "a", "finish_reason": "stop"},
                {"index": 1, "text": "b", "finish_reason": "length"},
            ],
        }
    )
    assert r.result("completions", {"total_tokens": 2}) == {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1,
        "model": "m",
        "choices": [
            {"index": 0, "text": "Aa", "finish_reason": "stop"},
            {"index": 1, "text": "Bb", "finish_reason": "length"},
        ],
        "usage": {"total_tokens": 2},
    }


def test_jsonl_rotation_keeps_whole_lines(tmp_path):
    path = tmp_path / "c.jsonl"
    sinks = [JsonlFileSink(str(path), max_bytes=2000, backups=2) for _ in range(2)]  # two "workers"

    def write(sink: JsonlFileSink, tag: str) -> None:
        for i in range(100):
            sink.handle({"tag": tag, "i": i, "pad": "x" * 50})

    threads = [threading.Thread(target=write, args=(s, str(n))) for n, s in enumerate(sinks)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    files = [path, tmp_path / "c.jsonl.1", tmp_path / "c.jsonl.2"]
    assert all(f.exists() for f in files) and not (tmp_path / "c.jsonl.3").exists()
    for f in files:
        assert f.stat().st_size <= 2000 + 2 * 100  # each writer may append a line between check and write
        for line in f.read_text().splitlines():
            assert json.loads(line)["pad"] == "x" * 50


def test_masking():
    body = {
        "model": "m",
        "max_tokens": 5,
        "api_key": "sk-abcdefghijklmnop",
        "nested": [{"Authorization": "Bearer tok-1234567890abcd"}],
        "text": "Bearer sk-zzzzzzzzzzzz9876",
    }
    masked = mask_secrets(body)
    assert masked == {
        "model": "m",
        "max_tokens": 5,
        "api_key": "…mnop",
        "nested": [{"Authorization": "…abcd"}],
        "text": "Bearer …9876",
    }
    assert hint("short") == "****" and hint(None) is None

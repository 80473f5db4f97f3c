"""A stream's usage row is queued before its `[DONE]` reaches the client, not only after the last
byte: a replica killed in between would otherwise lose a finished stream's row."""

from __future__ import annotations

from dataclasses import replace

from app import create_app
from app.access.settings import AccessSettings
from tests.fakes.openai_upstream import chat_chunk, sse_reply
from tests.support import guard_of, proxy_config

CHAT = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}


def test_the_row_is_queued_when_done_is_sent(upstream, tmp_path):
    access = AccessSettings.from_env({"USAGE_ACCOUNTING": "true", "DATABASE_URL": f"sqlite:///{tmp_path}/u.db"})
    app = create_app(replace(proxy_config(upstream), access=access))
    writer = guard_of(app).writer
    upstream.enqueue(sse_reply([chat_chunk("Hello"), chat_chunk(finish="stop")]))
    resp = app.test_client().post("/v1/chat/completions", json=CHAT, buffered=False)
    seen = b""
    for piece in resp.response:
        seen += piece
        if b"data: [DONE]" in seen:
            break
    assert seen.endswith(b"data: [DONE]\n\n")
    assert writer.received == 1  # queued with the last event, before the response closed
    resp.close()
    assert writer.received == 1  # and not again in `done`

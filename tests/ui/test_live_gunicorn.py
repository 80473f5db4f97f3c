"""Live requests and cancels through real Gunicorn (2 workers), embedded and with Redis, by the JSON API
(`Authorization: Bearer <ADMIN_TOKEN>`, as a script would): every open stream is listed whichever worker
answers, and each cancel closes the upstream connection within 1 s, whichever worker took it."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.fakes.openai_upstream import FakeUpstream, chat_chunk, sse_reply
from tests.support import TEST_REDIS_URL, Gunicorn, redis_or_skip
from tests.ui.conftest import ADMIN

STREAMS = 4
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}


@pytest.fixture(scope="module", params=["embedded", "redis"])
def proxy(
    request: pytest.FixtureRequest, module_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gunicorn]:
    env = {
        "TARGET_BASE_URL": module_upstream.base_url,
        "ADMIN_TOKEN": ADMIN,
        "DATABASE_URL": f"sqlite:///{tmp_path_factory.mktemp('live') / 'k.db'}",
        "REQUEST_TIMEOUT_SECONDS": "30",
    }
    client = None
    if request.param == "redis":
        client = redis_or_skip()
        env.update({"REDIS_URL": TEST_REDIS_URL, "REDIS_PREFIX": f"cot-proxy-test:{uuid.uuid4().hex[:12]}:"})
    g = Gunicorn(env, workers=2)
    yield g
    g.stop()
    if client is not None:
        for key in client.scan_iter(match=env["REDIS_PREFIX"] + "*"):
            client.delete(key)
        client.close()


def _live(proxy: Gunicorn) -> list[dict[str, Any]]:
    return requests.get(proxy.url + "/ui/api/live", headers=ADMIN_HEADERS, timeout=10).json()["requests"]


def _poll(check: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)  # polling a condition with a deadline
    return check()


def test_streams_of_both_workers_listed_and_cancelled(proxy: Gunicorn, module_upstream: FakeUpstream) -> None:
    module_upstream.reset()
    for _ in range(STREAMS):
        module_upstream.enqueue(
            sse_reply([chat_chunk(role="assistant"), chat_chunk("tick ")], done=False, delay=0.05, endless=True)
        )
    bodies: dict[int, bytes] = {}

    def stream(i: int) -> None:
        # A new connection each: Gunicorn's workers share them out.
        with requests.post(
            proxy.url + "/v1/chat/completions",
            stream=True,
            timeout=30,
            json={"model": "m", "stream": True, "messages": [{"role": "user", "content": str(i)}]},
            headers={"X-Request-Id": f"live-{i}"},
        ) as r:
            bodies[i] = b"".join(r.iter_content(None))

    threads = [threading.Thread(target=stream, args=(i,), daemon=True) for i in range(STREAMS)]
    for t in threads:
        t.start()

    def all_listed() -> list[dict[str, Any]] | None:
        entries = _live(proxy)
        return entries if len(entries) == STREAMS else None

    listed = _poll(all_listed)
    assert listed, f"not every stream listed: {_live(proxy)}"
    assert sorted(e["request_id"] for e in listed) == [f"live-{i}" for i in range(STREAMS)]
    workers = {e["worker"] for e in listed}
    print(f"\n{STREAMS} streams on {len(workers)} worker(s)")
    # Every worker lists every stream: ask several times (new connections land on either worker).
    for _ in range(6):
        assert len(_live(proxy)) == STREAMS
    closed = []
    for entry in listed:
        module_upstream.disconnected.clear()
        asked = time.monotonic()
        r = requests.post(proxy.url + f"/ui/api/live/{entry['id']}/cancel", headers=ADMIN_HEADERS, timeout=10)
        assert r.status_code == 202, r.text
        assert module_upstream.disconnected.wait(5), f"upstream of {entry['request_id']} not closed"
        closed.append(module_upstream.disconnected_at - asked)
        assert _poll(lambda e=entry: e["id"] not in {x["id"] for x in _live(proxy)}, timeout=5)
    for t in threads:
        t.join(15)
    print("cancel -> upstream closed: " + ", ".join(f"{s * 1000:.0f} ms" for s in closed))
    for i in range(STREAMS):
        events = [json.loads(line[6:]) for line in bodies[i].decode().splitlines() if line.startswith("data: {")]
        assert events[-1]["error"]["code"] == "cancelled", i
    assert max(closed) < 1.0
    lines = [
        line
        for line in proxy.lines()
        if line.get("logger") == "cot_proxy.ui" and "cancelled by an operator" in line.get("message", "")
    ]
    print(f"{len(lines)} of {STREAMS} cancels crossed to the other worker")

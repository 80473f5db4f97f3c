"""Upstream answers are bounded and checked, through real Gunicorn, against a hostile upstream.

MAX_RESPONSE_BYTES=1048576 and MAX_SSE_EVENT_BYTES=65536:
- a 5 MB JSON answer (also gzip, which is small on the wire): 502 `upstream_response_too_large`;
- a stream request answered with 200 application/json: 502 `upstream_not_streaming`, in target and
  Livepeer mode (while a Livepeer stream labelled text/plain still streams);
- garbage with 200 where JSON is promised: 502 `upstream_bad_response` on every JSON route;
- HEAD /v1/models: the upstream's status and headers, no body, not 502;
- `103 Early Hints` before the real answer: the client gets the real answer (JSON and SSE);
- an SSE event that never ends: one in-band error event `upstream_event_too_large`, the stream
  ends, the upstream connection is closed and the worker's memory stays bounded (last: it is the
  one test that could tie up a worker on a proxy without the bound).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import pytest

from tests.fakes.hostile_upstream import (
    EndlessEvent,
    chat_stream_bytes,
    early_hints,
    garbage,
    huge_json,
    json_answer,
    not_streaming,
    write_response,
)
from tests.fakes.openai_upstream import chat_completion
from tests.support import (
    Gunicorn,
    RawConnection,
    RawResponse,
    raw_request,
    request_bytes,
    rss_bytes,
    sse_data,
    worker_pids,
)

MSG = [{"role": "user", "content": "hi"}]
MAX_RESPONSE = 1048576
MAX_EVENT = 65536
ENV = {
    "MAX_RESPONSE_BYTES": str(MAX_RESPONSE),
    "MAX_SSE_EVENT_BYTES": str(MAX_EVENT),
    "REQUEST_TIMEOUT_SECONDS": "10",
    "GUNICORN_GRACEFUL_TIMEOUT": "2",
}

JSON_ROUTES = {
    # route -> (method, request body)
    "/v1/chat/completions": ("POST", {"model": "m", "messages": MSG}),
    "/v1/completions": ("POST", {"model": "m", "prompt": "hi"}),
    "/v1/embeddings": ("POST", {"model": "e", "input": "hi"}),
    "/v1/models": ("GET", None),
    "/v1/rerank": ("POST", {"model": "r", "query": "q", "documents": ["a", "b"]}),
    "/v1/images/generations": ("POST", {"model": "i", "prompt": "a cat"}),
}


@pytest.fixture(scope="module", params=["gevent", "requests"])
def proxy(upstream, request) -> Iterator[Gunicorn]:
    """The proxy on each upstream transport (app/transport.py, and requests' own adapter)."""
    env = {**ENV, "TARGET_BASE_URL": upstream.url("/tenant-a/v1/"), "UPSTREAM_TRANSPORT": request.param}
    g = Gunicorn(env, workers=1)
    yield g
    g.stop()


@pytest.fixture(scope="module")
def livepeer(upstream) -> Iterator[Gunicorn]:
    g = Gunicorn({**ENV, "GATEWAY_URL": upstream.root}, workers=1)
    yield g
    g.stop()


def _call(g: Gunicorn, method: str, path: str, body: dict | None, timeout: float = 15) -> RawResponse:
    if body is None:
        return raw_request(g.port, method, path, timeout=timeout)
    return raw_request(
        g.port, method, path, {"Content-Type": "application/json"}, json.dumps(body).encode(), timeout=timeout
    )


def _assert_error(r: RawResponse, status: int, code: str) -> None:
    assert r.status == status, r
    assert r.error()["code"] == code, r


# -- size -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "framing, encoding",
    [("content-length", None), ("chunked", None), ("content-length", "gzip"), ("chunked", "gzip")],
    ids=["content-length", "chunked", "gzip-content-length", "gzip-chunked"],
)
def test_huge_json_answer_502(proxy, up, framing, encoding):
    up.enqueue(huge_json(5 * 1024 * 1024, chunked=framing == "chunked", encoding=encoding))
    r = _call(proxy, "POST", "/v1/chat/completions", {"model": "m", "messages": MSG})
    _assert_error(r, 502, "upstream_response_too_large")
    assert len(r.body) < 10_000


def test_json_answer_under_the_bound_passes(proxy, up):
    up.enqueue(huge_json(MAX_RESPONSE // 2))
    r = _call(proxy, "POST", "/v1/chat/completions", {"model": "m", "messages": MSG})
    assert r.status == 200, r
    assert len(r.json()["choices"][0]["message"]["content"]) >= MAX_RESPONSE // 2 - 16


# -- stream requests must get a stream -----------------------------------------------------------


@pytest.mark.parametrize(
    "route, body",
    [
        ("/v1/chat/completions", {"model": "m", "messages": MSG, "stream": True}),
        ("/v1/completions", {"model": "m", "prompt": "hi", "stream": True}),
    ],
)
def test_stream_request_answered_with_json_502(proxy, up, route, body):
    up.enqueue(not_streaming())
    r = _call(proxy, "POST", route, body)
    _assert_error(r, 502, "upstream_not_streaming")


def test_livepeer_stream_request_answered_with_json_502(livepeer, up):
    up.enqueue(not_streaming())
    r = _call(livepeer, "POST", "/v1/chat/completions", {"model": "m", "messages": MSG, "stream": True})
    _assert_error(r, 502, "upstream_not_streaming")
    assert [x.line for x in up.requests] == [b"POST /process/request/v1/chat/completions HTTP/1.1"]


def test_livepeer_text_plain_stream_still_streams(livepeer, up):
    """The control case: the gateway labels real streams text/plain; those are SSE."""
    r = _call(livepeer, "POST", "/v1/chat/completions", {"model": "m", "messages": MSG, "stream": True})
    assert r.status == 200, r
    assert r.headers["content-type"].startswith("text/event-stream")
    data = sse_data(r.body)
    assert data[-1] == "[DONE]"
    assert "".join(json.loads(d)["choices"][0]["delta"].get("content") or "" for d in data[:-1]) == "Hello Livepeer"


def test_livepeer_text_plain_json_answer_still_passes(livepeer, up):
    r = _call(livepeer, "POST", "/v1/chat/completions", {"model": "m", "messages": MSG})
    assert r.status == 200, r
    assert r.json()["choices"][0]["message"]["content"] == "Hello Livepeer"


# -- garbage ---------------------------------------------------------------------------------


@pytest.mark.parametrize("content_type", ["application/json", "text/html"])
@pytest.mark.parametrize("route", list(JSON_ROUTES))
def test_garbage_where_json_is_promised_502(proxy, up, route, content_type):
    method, body = JSON_ROUTES[route]
    up.enqueue(garbage(content_type))
    r = _call(proxy, method, route, body)
    _assert_error(r, 502, "upstream_bad_response")
    assert b"oops" not in r.body


@pytest.mark.parametrize("route", list(JSON_ROUTES))
def test_json_routes_pass_good_json(proxy, up, route):
    """The control case for the garbage test: the same routes with a JSON answer are 200."""
    method, body = JSON_ROUTES[route]
    up.enqueue(json_answer({"object": "list", "data": [], "id": "x", "choices": [], "results": []}))
    r = _call(proxy, method, route, body)
    assert r.status == 200, r
    assert r.json()["id"] == "x"


# -- HEAD ------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 404])
def test_head_models_relays_status_and_headers_without_body(proxy, up, status):
    def head_answer(req, conn):
        assert req.method == "HEAD"
        write_response(
            conn, req, status, {"Content-Type": "application/json", "X-Upstream-Marker": "head-ok"}, [b"x" * 1234]
        )

    up.enqueue(head_answer)
    with RawConnection(proxy.port) as conn:
        # HEAD, then GET /healthz on the same connection: a body after the HEAD answer would be read
        # where the next status line should be.
        conn.send(
            request_bytes("HEAD", "/v1/models", port=proxy.port)
            + request_bytes("GET", "/healthz", {"Connection": "close"}, port=proxy.port)
        )
        got, _, headers, _ = conn.read_head()
        nxt = conn.read_response("GET")
    h = {k.lower(): v for k, v in headers}
    assert got == status, (got, headers)
    assert h.get("x-upstream-marker") == "head-ok", headers
    assert nxt.status == 200 and nxt.json() == {"status": "ok"}, f"a body after the HEAD answer? {nxt}"
    assert [x.line for x in up.requests] == [b"HEAD /tenant-a/v1/models HTTP/1.1"]


# -- 1xx ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 2])
def test_early_hints_then_json(proxy, up, count):
    up.enqueue(early_hints(json_answer(chat_completion("after the hints")), count=count))
    r = _call(proxy, "POST", "/v1/chat/completions", {"model": "m", "messages": MSG})
    assert r.status == 200, r
    assert r.json()["choices"][0]["message"]["content"] == "after the hints"


@pytest.mark.parametrize("count", [1, 2])
def test_early_hints_then_sse(proxy, up, count):
    def stream(req, conn):
        write_response(conn, req, 200, {"Content-Type": "text/event-stream"}, [chat_stream_bytes("m")], chunked=True)

    up.enqueue(early_hints(stream, count=count))
    r = _call(proxy, "POST", "/v1/chat/completions", {"model": "m", "messages": MSG, "stream": True})
    assert r.status == 200, r
    assert r.headers["content-type"].startswith("text/event-stream")
    data = sse_data(r.body)
    assert data and data[-1] == "[DONE]", r
    assert (
        "".join(json.loads(d)["choices"][0]["delta"].get("content") or "" for d in data[:-1])
        == "Hello compressed world"
    )


# -- an event that never ends (keep last) -------------------------------------------------------


class PeakRSS:
    """The highest resident size of `pids`, sampled every 20 ms in a thread while in the `with` block."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, sum(rss_bytes(p) for p in self.pids))
            self._stop.wait(0.02)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2)


def test_endless_sse_event_ends_with_in_band_error(proxy, up):
    endless = EndlessEvent(max_seconds=20, max_bytes=96 * 1024 * 1024)
    up.enqueue(endless)
    pids = worker_pids(proxy)
    assert pids, "no Gunicorn worker found"
    baseline = sum(rss_bytes(p) for p in pids)
    body = json.dumps({"model": "m", "messages": MSG, "stream": True}).encode()
    received = b""
    ended = False
    with PeakRSS(pids) as rss, RawConnection(proxy.port, timeout=15) as conn:
        conn.send(
            request_bytes(
                "POST",
                "/v1/chat/completions",
                {"Content-Type": "application/json", "Connection": "close"},
                body,
                port=proxy.port,
            )
        )
        status, _, headers, _ = conn.read_head(timeout=10)
        started = time.monotonic()
        try:
            for piece in conn.iter_body(headers, timeout=10, limit=4 * 1024 * 1024):
                received += piece
            ended = True
        except (TimeoutError, ConnectionError):
            pass
        elapsed = time.monotonic() - started
    assert status == 200, (status, headers)
    data = sse_data(received)
    errors = [json.loads(d) for d in data if d.startswith("{") and '"error"' in d]
    assert errors, (
        f"no in-band error event after {elapsed:.1f} s ({len(received)} bytes to the client, "
        f"{endless.sent} from the upstream): {received[:200]!r}"
    )
    assert errors[-1]["error"]["code"] == "upstream_event_too_large", errors[-1]
    assert ended, "the stream did not end after the error event"
    assert len(received) < 2 * MAX_EVENT, f"{len(received)} bytes reached the client"
    assert endless.done.wait(10) and endless.peer_gone, (
        f"the proxy kept reading the endless event ({endless.sent} bytes) instead of closing the upstream"
    )
    assert rss.peak - baseline < 32 * 1024 * 1024, (
        f"worker RSS grew by {(rss.peak - baseline) / 2**20:.0f} MiB while {endless.sent / 2**20:.0f} MiB came in"
    )

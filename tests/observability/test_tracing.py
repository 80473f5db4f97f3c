"""Tracing, only where OpenTelemetry is installed (requirements-otel.txt): skipped otherwise.

Runs Gunicorn in a subprocess (the instrumentation patches `requests` process-wide)
against a local OTLP/HTTP receiver, and checks the spans carry the request id and model."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from tests.fakes.openai_upstream import FakeUpstream
from tests.support import Gunicorn

pytest.importorskip("opentelemetry.sdk")
pytest.importorskip("opentelemetry.instrumentation.flask")
pytest.importorskip("opentelemetry.instrumentation.urllib3")
pytest.importorskip("opentelemetry.exporter.otlp.proto.http")


class Receiver:
    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.arrived = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                receiver.bodies.append(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                receiver.arrived.set()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()


def test_spans_carry_request_id_and_model(receiver: Receiver, tmp_path):
    upstream = FakeUpstream().start()
    g = Gunicorn(
        {
            "TARGET_BASE_URL": upstream.base_url,
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        },
        tmp_path / "gunicorn.log",
        workers=1,
    )
    try:
        rid = f"trace-{uuid.uuid4().hex}"
        r = requests.post(
            g.url + "/v1/chat/completions",
            json={"model": "trace-model", "messages": [{"role": "user", "content": "hi"}]},
            headers={"X-Request-ID": rid},
            timeout=10,
        )
        assert r.status_code == 200
        assert "traceparent" in upstream.last.headers  # the upstream call is a child span
        deadline_hit = not receiver.arrived.wait(10)
        assert not deadline_hit, "no spans were exported"
        for _ in range(50):
            if any(rid.encode() in b for b in receiver.bodies):
                break
            receiver.arrived.clear()
            receiver.arrived.wait(0.2)
        spans = b"".join(receiver.bodies)
        assert rid.encode() in spans and b"cot_proxy.request_id" in spans
        assert b"gen_ai.request.model" in spans and b"trace-model" in spans
    finally:
        g.stop()
        upstream.stop()

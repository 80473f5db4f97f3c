"""Raw HTTP through the proxy: the error table, headers, bodies, incremental streaming."""

from __future__ import annotations

import http.client
import json
import threading

import pytest

from app.bounds import Bounds
from tests.fakes.openai_upstream import Reply, chat_chunk, json_reply, sse_reply

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def assert_envelope(resp, status, param=None):
    assert resp.status_code == status
    err = resp.get_json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["param"] == param
    return err


@pytest.mark.parametrize(
    "body, param",
    [
        ({}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": ["hi"]}, "messages[0]"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": "x"}], "stream": "yes"}, "stream"),
        ({"messages": [{"role": "user", "content": "x"}], "model": 5}, "model"),
    ],
)
def test_validation_400_names_param(client, upstream, body, param):
    err = assert_envelope(client.post("/v1/chat/completions", json=body), 400, param)
    assert err["type"] == "invalid_request_error"
    assert upstream.requests == []


def test_invalid_json_400(client, upstream):
    resp = client.post("/v1/chat/completions", data="{nope", content_type="application/json")
    assert assert_envelope(resp, 400)["code"] == "invalid_json"
    resp = client.post("/v1/chat/completions", data="[1]", content_type="application/json")
    assert assert_envelope(resp, 400)["code"] == "invalid_json"


def test_wrong_content_type_400(client):
    resp = client.post("/v1/chat/completions", data=json.dumps(CHAT), content_type="text/plain")
    assert assert_envelope(resp, 400)["code"] == "invalid_content_type"


def test_too_large_413(upstream):
    from app import create_app
    from tests.support import proxy_config

    c = create_app(proxy_config(upstream, bounds=Bounds(max_request_bytes=100))).test_client()
    resp = c.post("/v1/chat/completions", json={**CHAT, "pad": "x" * 200})
    assert_envelope(resp, 413)
    resp = c.post("/v1/audio/transcriptions", data=b"x" * 200, content_type="application/octet-stream")
    assert_envelope(resp, 413)
    assert upstream.requests == []


def test_unknown_route_404(client):
    assert_envelope(client.get("/nothing/here"), 404)


def test_upstream_non_json_error_is_wrapped(client, upstream):
    upstream.enqueue(
        Reply(
            status=503,
            headers={"Content-Type": "text/plain", "Retry-After": "3"},
            parts=[b"overloaded, try later"],
            chunked=False,
        )
    )
    resp = client.post("/v1/chat/completions", json=CHAT)
    err = assert_envelope(resp, 503)
    assert err["message"] == "overloaded, try later"
    assert resp.headers["Retry-After"] == "3"


def test_upstream_json_error_passes_unchanged(client, upstream):
    body = {
        "error": {"message": "bad key", "type": "invalid_request_error", "param": None, "code": "invalid_api_key"},
        "extra": 1,
    }
    upstream.enqueue(json_reply(body, status=401, headers={"Content-Type": "application/vnd.api+json"}))
    resp = client.post("/v1/chat/completions", json=CHAT)
    assert resp.status_code == 401 and json.loads(resp.data) == body
    assert resp.headers["Content-Type"] == "application/vnd.api+json"


def test_headers_both_ways(client, upstream):
    upstream.enqueue(
        json_reply(
            {"object": "list", "data": []},
            headers={
                "X-Custom": "kept",
                "Livepeer-Balance": "123",
                "X-Orchestrator-Url": "http://orch",
                "X-Metadata": "m",
                "Keep-Alive": "timeout=5",
            },
        )
    )
    resp = client.get(
        "/v1/models?limit=2",
        headers={
            "Authorization": "Bearer sk-client",
            "X-Request-ID": "trace-42",
            "X-Client-Thing": "yes",
            "Connection": "keep-alive, X-Secret-Hop",
            "X-Secret-Hop": "drop-me",
            "Proxy-Authorization": "Basic x",
        },
    )
    sent = upstream.last
    assert sent.path == "/v1/models?limit=2"
    assert sent.headers["authorization"] == "Bearer sk-client"
    assert sent.headers["x-request-id"] == "trace-42"
    assert sent.headers["x-client-thing"] == "yes"
    assert sent.headers["host"] == f"127.0.0.1:{upstream.port}"
    assert "x-secret-hop" not in sent.headers and "proxy-authorization" not in sent.headers
    assert resp.headers["X-Request-ID"] == "trace-42"
    assert resp.headers["X-Custom"] == "kept"
    for noise in ("Livepeer-Balance", "X-Orchestrator-Url", "X-Metadata", "Keep-Alive"):
        assert noise not in resp.headers
    assert int(resp.headers["Content-Length"]) == len(resp.data)


def test_request_id_generated_and_sent_upstream(client, upstream):
    resp = client.post("/v1/chat/completions", json=CHAT)
    rid = resp.headers["X-Request-ID"]
    assert len(rid) == 36 and upstream.last.headers["x-request-id"] == rid


def test_upstream_api_key_replaces_client_auth(upstream):
    from app import create_app
    from tests.support import proxy_config

    c = create_app(proxy_config(upstream, upstream_api_key="sk-upstream")).test_client()
    c.post("/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer sk-client"})
    assert upstream.last.headers["authorization"] == "Bearer sk-upstream"


def test_error_messages_never_contain_secrets(upstream):
    from app import create_app
    from app.config import Config

    c = create_app(
        Config(
            target_base_url="http://user:pw@127.0.0.1:1/v1/?key=sk-secret",
            connect_timeout=1,
            upstream_api_key="sk-upstream",
        )
    ).test_client()
    resp = c.post("/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer sk-client"})
    assert resp.status_code == 502
    for secret in (b"sk-secret", b"sk-upstream", b"sk-client", b"pw"):
        assert secret not in resp.data


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE", "GET", "POST"])
def test_catch_all_methods_and_query(client, upstream, method):
    resp = client.open("/v1/files/abc?purpose=x&n=1", method=method, data=b"raw bytes" if method != "GET" else None)
    assert resp.status_code == 200
    assert upstream.last.method == method and upstream.last.path == "/v1/files/abc?purpose=x&n=1"


def test_multipart_upload_unchanged(client, upstream):
    import io

    payload = bytes(range(256)) * 2000
    resp = client.post(
        "/v1/audio/transcriptions",
        data={"model": "whisper", "file": (io.BytesIO(payload), "a.wav")},
        content_type="multipart/form-data",
    )
    assert resp.status_code == 200
    sent = upstream.last
    assert sent.headers["content-type"].startswith("multipart/form-data; boundary=")
    assert payload in sent.body
    assert int(sent.headers["content-length"]) == len(sent.body)


def test_binary_response_streams_through(client, upstream):
    blob = bytes(range(256)) * 4096  # 1 MiB
    parts = [blob[i : i + 65536] for i in range(0, len(blob), 65536)]
    upstream.enqueue(Reply(headers={"Content-Type": "audio/mpeg"}, parts=parts))
    resp = client.post("/v1/audio/speech", json={"model": "tts", "input": "hi"})
    assert resp.is_streamed
    assert resp.headers["Content-Type"] == "audio/mpeg"
    assert resp.get_data() == blob


def test_sse_headers(client, upstream):
    resp = client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    assert resp.headers["Cache-Control"] == "no-cache" and resp.headers["X-Accel-Buffering"] == "no"
    assert "Content-Length" not in resp.headers
    assert resp.get_data().endswith(b"data: [DONE]\n\n")


def test_each_event_sent_before_upstream_sends_the_next(live, upstream):
    """The upstream holds its second event until the client has read the first: no holdback."""
    gate = threading.Event()
    upstream.enqueue(sse_reply([chat_chunk("first"), chat_chunk("second")], gate=gate))
    conn = http.client.HTTPConnection("127.0.0.1", int(live.url.rsplit(":", 1)[1]), timeout=10)
    conn.request(
        "POST",
        "/v1/chat/completions",
        body=json.dumps({**CHAT, "stream": True}),
        headers={"Content-Type": "application/json"},
    )
    resp = conn.getresponse()
    first = b""
    while b"\n\n" not in first:
        first += resp.read1(4096)
    assert b'"first"' in first and b"second" not in first
    gate.set()
    rest = resp.read()
    assert b'"second"' in rest and rest.endswith(b"data: [DONE]\n\n")
    conn.close()


def test_health_probes(client, upstream):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    assert client.get("/livez").status_code == 200
    resp = client.get("/health")
    assert resp.status_code == 200 and resp.get_json()["status"] == "healthy"
    assert client.get("/readyz").status_code == 200


def test_health_unhealthy_when_unreachable():
    from app import create_app
    from app.config import Config

    c = create_app(Config(target_base_url="http://127.0.0.1:1/v1/", connect_timeout=1)).test_client()
    resp = c.get("/health")
    assert resp.status_code == 503 and resp.get_json()["status"] == "unhealthy"
    assert c.get("/readyz").status_code == 503
    assert c.get("/healthz").status_code == 200


def test_echo_mode_errors_and_shapes(echo_client):
    resp = echo_client.post(
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hello"}]},
        headers={"X-Request-ID": "my-trace-id-42"},
    )
    body = resp.get_json()
    assert body["id"] == "my-trace-id-42" and body["model"] == "echo" and body["object"] == "chat.completion"
    assert isinstance(body["created"], int)
    assert_envelope(echo_client.post("/v1/chat/completions", json={"messages": "x"}), 400, "messages")
    assert echo_client.get("/health").get_json()["status"] == "healthy"
    assert echo_client.post("/v1/images/generations", json={"prompt": "x"}).status_code == 404


def test_health_shows_target_without_credentials(upstream):
    from app import create_app
    from app.config import Config

    url = upstream.base_url.replace("http://", "http://user:pw@") + "?key=sk-secret"
    resp = create_app(Config(target_base_url=url, connect_timeout=2)).test_client().get("/health")
    assert resp.get_json() == {"status": "healthy", "target_url": upstream.base_url}

"""TLS to the upstream is verified: a self-signed upstream is refused with a clear 502, also
on the second call (the adapter caches connection pools per origin and TLS setting)."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from app import create_app
from app.config import Config


def self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


class Answer(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: a second call reuses the TLS connection

    def do_POST(self) -> None:
        self.server.peers.add(self.client_address[1])  # type: ignore[attr-defined]
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def tls_upstream(tmp_path: Path) -> Iterator[int]:
    cert, key = self_signed(tmp_path)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    server.peers = set()  # type: ignore[attr-defined]
    server.daemon_threads = True
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_a_self_signed_upstream_is_refused_every_time(tls_upstream):
    port = tls_upstream.server_address[1]
    client = create_app(Config.from_env({"TARGET_BASE_URL": f"https://127.0.0.1:{port}/v1"})).test_client()
    for _ in range(2):
        r = client.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "x"}]})
        assert r.status_code == 502
        assert r.get_json()["error"]["code"] == "upstream_unavailable"
        assert "TLS" in r.get_json()["error"]["message"]


@pytest.mark.parametrize("transport", ["requests", "gevent"])
def test_a_trusted_upstream_answers_twice_over_one_connection(tls_upstream, tmp_path: Path, transport: str):
    """The positive path on each transport: the certificate verified (against itself as the CA, host
    127.0.0.1 in its SAN), the answer read, and the second call on the pooled TLS connection (whose
    idle check must work on a TLS socket)."""
    pytest.importorskip("geventhttpclient")
    import requests

    from app.upstream import Upstream

    up = Upstream(transport=transport)
    url = f"https://127.0.0.1:{tls_upstream.server_address[1]}/v1/chat/completions"
    try:
        for _ in range(2):
            prepared = requests.PreparedRequest()
            prepared.prepare(method="POST", url=url, headers={"Content-Type": "application/json"}, data=b"{}")
            resp = up.adapter.send(prepared, stream=False, timeout=(5, 5), verify=str(tmp_path / "cert.pem"))
            assert (resp.status_code, resp.content) == (200, b"{}")
            resp.close()
    finally:
        up.adapter.close()
    assert len(tls_upstream.peers) == 1, tls_upstream.peers

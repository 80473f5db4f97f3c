"""Sockets for the observability tests: a webhook that never answers; Gunicorn is in tests.support."""

from __future__ import annotations

import json
import socket
import threading


class Blackhole:
    """A TCP listener that accepts connections and never answers (a dead webhook)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.accepted = threading.Event()
        self.connections: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections.append(conn)
            self.accepted.set()

    def close(self) -> None:
        self._closed = True
        for c in self.connections:
            try:
                c.close()
            except OSError:
                pass
        self.sock.close()


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of every sample called `name` in Prometheus text output."""
    out = []
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        labels: dict[str, str] = {}
        if "{" in head:
            body = head[head.index("{") + 1 : head.rindex("}")]
            for part in _split_labels(body):
                k, _, v = part.partition("=")
                labels[k] = json.loads(v)
        out.append((labels, float(value)))
    return out


def _split_labels(body: str) -> list[str]:
    parts, cur, quoted, escaped = [], "", False, False
    for ch in body:
        if escaped:
            cur += ch
            escaped = False
        elif ch == "\\":
            cur += ch
            escaped = True
        elif ch == '"':
            cur += ch
            quoted = not quoted
        elif ch == "," and not quoted:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur:
        parts.append(cur)
    return parts


def total(text: str, name: str, **match: str) -> float:
    return sum(v for labels, v in samples(text, name) if all(labels.get(k) == m for k, m in match.items()))

"""New connections spread over the gevent workers (app/fair_accept.py), through real Gunicorn.

32 keep-alive clients connect at once and keep requests flowing; the established connections
each worker holds are then counted from /proc (its socket inodes against /proc/net/tcp). With the
fair accept off, this test failed one run in four (20 against 12; wrk -c32 saw 22/10 two runs in
three); with it on, splits of 15/17 and 17/15."""

from __future__ import annotations

import http.client
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.openai_upstream import FakeUpstream
from tests.support import Gunicorn, worker_pids

CLIENTS = 32
BODY = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'


@pytest.fixture(scope="module")
def proxy() -> Iterator[Gunicorn]:
    up = FakeUpstream().start()
    g = Gunicorn({"TARGET_BASE_URL": up.root + "/v1/", "GUNICORN_MAX_REQUESTS": "0"}, workers=2)
    yield g
    g.stop()
    up.stop()


def established_per_worker(g: Gunicorn) -> dict[int, int]:
    """Established TCP connections on the proxy's port, by the worker holding the socket."""
    port = f"{g.port:04X}"
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        parts = line.split()
        if parts[1].endswith(":" + port) and parts[3] == "01":  # local address is ours, ESTABLISHED
            inodes.add(parts[9])
    out = {}
    for pid in worker_pids(g):
        held = 0
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                held += 1
        out[pid] = held
    return out


def test_a_burst_of_keep_alive_clients_is_split_evenly(proxy):
    stop = threading.Event()
    ready = threading.Barrier(CLIENTS + 1, timeout=20)
    errors: list[BaseException] = []

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
        try:
            ready.wait()
            deadline = time.monotonic() + 10
            while not stop.is_set() and time.monotonic() < deadline:
                conn.request("POST", "/v1/chat/completions", BODY, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                assert resp.status == 200
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    ready.wait()  # all connect (and send) at once
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # until every client holds its connection
            split = established_per_worker(proxy)
            if sum(split.values()) >= CLIENTS:
                break
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join(15)
    assert not errors, errors[:3]
    assert sum(split.values()) == CLIENTS, split
    assert max(split.values()) - min(split.values()) <= 6, split

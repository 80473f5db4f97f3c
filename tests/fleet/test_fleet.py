"""The fleet on one machine, all real: 3 proxy replicas (Gunicorn, 2 gevent workers each) behind nginx
(deploy/compose/nginx.conf with the replicas' 127.0.0.1 ports), sharing the machine's Redis (limits) and
PostgreSQL (keys, usage). While clients keep streams going through nginx, the replicas are restarted one
after another (SIGTERM, wait for a clean exit, start it again on its port, next); meanwhile one key with
an rpm limit is hammered through nginx. Then: no request lost (every stream 200 and whole to [DONE]), the
limit exact across the fleet (rpm answers 200, the rest 429), every admitted request in the usage table
exactly once (by the X-Request-ID the client sent), and every replica exited 0 without a graceful-timeout
kill. nginx, Redis or PostgreSQL missing: skipped saying so (failed under CI=true)."""

from __future__ import annotations

import re
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from app.access.store import KeyStore
from tests.access.conftest import TEST_PG_URL, TEST_REDIS_URL, pg_url
from tests.fakes.openai_upstream import FakeUpstream
from tests.fleet.streams import Stream, slow_streams, wait_until
from tests.seeds import tools
from tests.support import ROOT, Gunicorn, free_port

REPLICAS = 3
CLIENTS = 4
RPM = 20
BURST = 30
GRACEFUL = 10
MAX_STREAMS_PER_CLIENT = 400
MAX_SECONDS = 60


class Replica(Gunicorn):
    """A Gunicorn on a port of our choosing, so a restarted replica comes back where nginx expects it."""

    def __init__(self, env: dict[str, str], port: int) -> None:
        self._fixed_port = port
        super().__init__({**env, "PORT": str(port)}, workers=2)

    @property
    def port(self) -> int:
        return self._fixed_port

    @port.setter
    def port(self, _ignored: int) -> None:  # Gunicorn.__init__ picks a free one; ours stands
        pass


class Nginx:
    """nginx -p <dir> with the shipped config, its upstream servers and listen port rewritten."""

    def __init__(self, where: Path, replica_ports: list[int]) -> None:
        binary = tools.command("nginx", "nginx-light")
        self.port = free_port()
        conf = (ROOT / "deploy" / "compose" / "nginx.conf").read_text()
        servers = iter(replica_ports)
        conf, n = re.subn(r"server proxy-\d+:5000", lambda _m: f"server 127.0.0.1:{next(servers)}", conf)
        assert n == len(replica_ports)
        conf = conf.replace("listen 8080;", f"listen 127.0.0.1:{self.port};")
        conf = conf.replace("worker_processes auto;", "worker_processes 2;")
        conf = conf.replace("/tmp/", f"{where}/")
        conf = conf.replace("error_log stderr warn;", f"error_log {where}/error.log warn;")
        (where / "nginx.conf").write_text(conf)
        self.log = where / "error.log"
        self.proc = subprocess.Popen([binary, "-p", str(where), "-e", str(self.log), "-c", str(where / "nginx.conf"),
                                      "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_until(self._up, 10, "nginx listening")

    def _up(self) -> bool:
        assert self.proc.poll() is None, self.log.read_text() if self.log.exists() else "nginx exited"
        try:
            requests.get(self.url + "/livez", timeout=2)
            return True
        except requests.ConnectionError:
            return False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> str:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return self.log.read_text() if self.log.exists() else ""


@pytest.fixture
def fleet_upstream() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    slow_streams(server, delay=0.03)  # 13 events: ~0.4 s a stream
    yield server
    server.stop()


@pytest.fixture
def fleet_redis() -> Iterator[tuple[str, str]]:
    import redis

    client = redis.Redis.from_url(TEST_REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError:
        tools.unavailable(f"Redis at {TEST_REDIS_URL} not reachable")
    prefix = f"cot-proxy-fleet-test:{uuid.uuid4().hex[:12]}:"
    yield TEST_REDIS_URL, prefix
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def fleet_database() -> Iterator[str]:
    try:
        import psycopg

        conn = psycopg.connect(TEST_PG_URL, connect_timeout=3, autocommit=True)
    except Exception:
        tools.unavailable(f"PostgreSQL at {TEST_PG_URL} not reachable")
    schema = f"cot_fleet_{uuid.uuid4().hex[:10]}"
    conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield pg_url(schema)
    finally:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")
        conn.close()


def test_rolling_restart_behind_nginx_loses_nothing_and_counts_exactly(
        tmp_path, fleet_upstream, fleet_redis, fleet_database):
    redis_url, prefix = fleet_redis
    store = KeyStore(fleet_database)
    store.ensure_schema()  # once, before three replicas would race to create it
    stream_key, _ = store.create("fleet-streams", rpm=100000)
    limited_key, _ = store.create("fleet-limited", rpm=RPM)
    env = {"TARGET_BASE_URL": fleet_upstream.base_url, "VIRTUAL_KEYS": "true", "DATABASE_URL": fleet_database,
           "REDIS_URL": redis_url, "REDIS_PREFIX": prefix, "USAGE_FLUSH_SECONDS": "0.2",
           "GUNICORN_GRACEFUL_TIMEOUT": str(GRACEFUL), "REQUEST_TIMEOUT_SECONDS": "20"}
    ports = [free_port() for _ in range(REPLICAS)]
    replicas: list[Replica] = []
    logs: list[str] = []
    exits: list[int | None] = []
    nginx = None
    streams: list[Stream] = []
    failures: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    deadline = time.monotonic() + MAX_SECONDS
    try:
        for port in ports:
            replicas.append(Replica(env, port))
        where = tmp_path / "nginx"
        where.mkdir()
        nginx = Nginx(where, ports)

        def client() -> None:
            for _ in range(MAX_STREAMS_PER_CLIENT):
                if stop.is_set() or time.monotonic() > deadline:
                    return
                rid = f"fleet-{uuid.uuid4().hex}"
                try:
                    s = Stream(nginx.url, key=stream_key, request_id=rid).rest()
                except requests.RequestException as exc:
                    with lock:
                        failures.append(f"{rid}: {exc!r}")
                    continue
                with lock:
                    streams.append(s)

        def limited(i: int) -> tuple[str, int]:
            rid = f"fleet-limited-{i}-{uuid.uuid4().hex[:8]}"
            r = requests.post(nginx.url + "/v1/chat/completions", timeout=20,
                              headers={"Authorization": f"Bearer {limited_key}", "X-Request-ID": rid,
                                       "Connection": "close"},
                              json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
            return rid, r.status_code

        clients = [threading.Thread(target=client, daemon=True) for _ in range(CLIENTS)]
        for t in clients:
            t.start()
        wait_until(lambda: len(streams) >= 2 * CLIENTS, 20, "streams flowing through nginx before the restarts")
        restarts = 0
        burst: list[tuple[str, int]] = []
        for i in range(REPLICAS):
            old = replicas[i]
            old.proc.send_signal(signal.SIGTERM)
            if i == 1:  # the limited key, hammered while one replica drains and the others take its share
                with ThreadPoolExecutor(6) as pool:
                    burst = list(pool.map(limited, range(BURST)))
            exits.append(old.proc.wait(timeout=GRACEFUL + 5))
            logs.append(old.stop())
            before = len(streams)
            replicas[i] = Replica(env, ports[i])
            restarts += 1
            wait_until(lambda b=before: len(streams) >= b + CLIENTS, 20, "streams flowing after the restart")
        stop.set()
        for t in clients:
            t.join(30)
            assert not t.is_alive()
    finally:
        stop.set()
        nginx_log = nginx.stop() if nginx is not None else ""
        for r in replicas:
            if r.proc.poll() is None:
                r.proc.terminate()
        for r in replicas:
            logs.append(r.stop())
            exits.append(r.proc.returncode)
    # Nothing lost: every stream through nginx answered 200 and arrived whole, across 3 restarts.
    assert restarts == REPLICAS
    assert not failures, failures[:5]
    cut = [(s.request_id, s.status, s.events[-2:]) for s in streams if not s.whole]
    other_errors = [line for line in nginx_log.splitlines() if "[error]" in line and "Connection refused" not in line]
    assert not cut, (cut[:5], other_errors[:5])
    assert len(streams) >= 10 * CLIENTS, len(streams)
    assert exits == [0] * (2 * REPLICAS), exits
    for log in logs:
        assert "Traceback" not in log and "graceful timeout" not in log.lower(), log[-3000:]
    # The rpm limit is one budget across the fleet: exactly RPM admitted, the rest refused.
    statuses = sorted(code for _, code in burst)
    assert statuses == [200] * RPM + [429] * (BURST - RPM), statuses
    # Usage: every admitted request exactly once (the replicas flushed at exit); refusals are not usage.
    admitted = {s.request_id for s in streams} | {rid for rid, code in burst if code == 200}
    with store.engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT request_id, count(*) FROM cot_usage GROUP BY request_id").all()
    store.close()
    counts = dict(rows)
    assert set(counts) == admitted, (len(counts), len(admitted), sorted(set(counts) ^ admitted)[:5])
    assert set(counts.values()) == {1}
    refusals = nginx_log.count("Connection refused")  # a draining or restarting replica: nginx tried the next
    print(f"fleet: {len(streams)} streams through nginx, {restarts} rolling restarts, {refusals} connections "
          f"refused and retried elsewhere, burst {BURST} -> {statuses.count(200)} x 200 + "
          f"{statuses.count(429)} x 429, {len(counts)} usage rows")

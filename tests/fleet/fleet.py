"""The fleet on one machine, for the fleet tests: N proxy replicas (real Gunicorn, 2 gevent workers each)
on fixed 127.0.0.1 ports behind real nginx (the shipped deploy/compose/nginx.conf, its upstream servers
and listen port rewritten), sharing the machine's Redis and PostgreSQL. A replica can be restarted the
way an orchestrator does it (SIGTERM: it drains while its successor starts on the same port) or killed
outright (SIGKILL to its master and workers), and the fleet's metrics are read from every replica."""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path

import requests

from tests.fleet.streams import refused, wait_until
from tests.seeds import tools
from tests.support import ROOT, Gunicorn, free_port

GRACEFUL = 30
"""GUNICORN_GRACEFUL_TIMEOUT of every replica: a stream of the tests lasts ~9 s, up to ~15 s under load."""


class Replica(Gunicorn):
    """A Gunicorn on a port of our choosing, so a restarted replica comes back where nginx expects it."""

    def __init__(self, env: dict[str, str], port: int, log_path: Path | None = None) -> None:
        self._fixed_port = port
        super().__init__({**env, "PORT": str(port)}, log_path=log_path, workers=2)

    @property
    def port(self) -> int:
        return self._fixed_port

    @port.setter
    def port(self, _ignored: int) -> None:  # Gunicorn.__init__ picks a free one; ours stands
        pass

    def processes(self) -> list[int]:
        """The master and its workers (what a container's SIGKILL takes down together)."""
        pids = [self.proc.pid]
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        except OSError:
            children = []
        return pids + [int(c) for c in children]


class Nginx:
    """nginx -p <dir> with the shipped config, its upstream servers and listen port rewritten."""

    def __init__(self, where: Path, replica_ports: list[int]) -> None:
        binary = tools.command("nginx", "nginx-light")
        self.port = free_port()
        conf = (ROOT / "deploy" / "compose" / "nginx.conf").read_text()
        servers = iter(replica_ports)
        conf, n = re.subn(r"server proxy-\d+:5000", lambda _m: f"server 127.0.0.1:{next(servers)}", conf)
        assert n == len(replica_ports), "deploy/compose/nginx.conf names one server per replica"
        conf = conf.replace("listen 8080;", f"listen 127.0.0.1:{self.port};")
        conf = conf.replace("worker_processes auto;", "worker_processes 2;")
        conf = conf.replace("/tmp/", f"{where}/")
        conf = conf.replace("error_log stderr warn;", f"error_log {where}/error.log warn;")
        (where / "nginx.conf").write_text(conf)
        self.log = where / "error.log"
        self.proc = subprocess.Popen(
            [binary, "-p", str(where), "-e", str(self.log), "-c", str(where / "nginx.conf"), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
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

    def errors(self) -> list[str]:
        """nginx's [error] lines so far, but for refused connects (a replica restarting: it tried the next)."""
        text = self.log.read_text() if self.log.exists() else ""
        return [line for line in text.splitlines() if "[error]" in line and "Connection refused" not in line]

    def refusals(self) -> int:
        return self.log.read_text().count("Connection refused") if self.log.exists() else 0

    def stop(self) -> str:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return self.log.read_text() if self.log.exists() else ""


def metric_total(url: str, name: str, timeout: float = 10.0) -> float:
    """The sum of every sample of counter `name` (all labels) on one replica's /metrics."""
    text = requests.get(url + "/metrics", timeout=timeout).text
    pattern = re.compile(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.e+]+)$", re.M)
    return sum(float(v) for v in pattern.findall(text))


class Fleet:
    """`size` replicas behind one nginx; every replica's output is kept (`logs`) with its exit code."""

    def __init__(self, where: Path, env: dict[str, str], size: int = 3) -> None:
        self.where = where
        self.env = env
        self.ports = [free_port() for _ in range(size)]
        self.replicas: list[Replica] = []
        self.logs: list[str] = []
        self.exits: list[int | None] = []
        self.nginx: Nginx | None = None
        self._pool = ThreadPoolExecutor(size)
        self._booting: dict[int, Future[Replica]] = {}
        self._started = itertools.count(1)
        try:
            # Started together: each mostly waits for its workers.
            futures = [self._pool.submit(self._start, port) for port in self.ports]
            wait(futures)
            self.replicas = [f.result() for f in futures if f.exception() is None]
            for f in futures:
                if f.exception() is not None:
                    raise f.exception()
            (where / "nginx").mkdir()
            self.nginx = Nginx(where / "nginx", self.ports)
        except BaseException:
            self.stop()
            raise

    def _start(self, port: int) -> Replica:
        """A replica on `port`, its workers' shared directory (metrics, usage spools) the same across restarts:
        a volume of its own, as the container of one pod has across restarts (deploy/kubernetes: /tmp)."""
        env = {**self.env, "PROMETHEUS_MULTIPROC_DIR": str(self.where / f"replica-{port}")}
        return Replica(env, port, log_path=self.where / f"replica-{port}-{next(self._started)}.log")

    @property
    def url(self) -> str:
        assert self.nginx is not None
        return self.nginx.url

    def urls(self) -> list[str]:
        """Each replica's own address (around nginx)."""
        return [r.url for r in self.replicas]

    def restart(self, i: int) -> Replica:
        """What an orchestrator's rolling update does to one replica: SIGTERM (it fails readiness, closes its
        listeners and lets its streams finish), and its successor starts on the same port as soon as the old
        listeners are gone. Returns once the successor serves, with the old one still draining: `retire` it."""
        old = self.replicas[i]
        old.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: refused(old.port) or old.proc.poll() is not None, 20, "the old listener closed")
        self.replicas[i] = self._start(old.port)
        return old

    def retire(self, old: Replica) -> int | None:
        """Wait for a replica that was told to stop (graceful timeout + a margin); its exit code."""
        try:
            old.proc.wait(timeout=GRACEFUL + 10)
        except subprocess.TimeoutExpired:
            pass
        self._retire(old)
        return old.proc.returncode

    def kill(self, i: int) -> int:
        """SIGKILL to the replica's master and workers at once (a container killed, a node lost); its
        successor starts on the same port in the background (`whole()` waits for it). Returns how many
        processes were killed."""
        old = self.replicas[i]
        pids = old.processes()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        old.proc.wait(timeout=10)
        wait_until(lambda: refused(old.port), 10, "the killed replica's port free")
        self._retire(old)
        self._booting[i] = self._pool.submit(self._start, old.port)
        return len(pids)

    def whole(self) -> None:
        """Every replica serving again (the successors of killed ones started)."""
        for i, future in list(self._booting.items()):
            self.replicas[i] = future.result(timeout=120)
            del self._booting[i]

    def _retire(self, replica: Replica) -> None:
        self.logs.append(replica.stop())
        self.exits.append(replica.proc.returncode)

    def metric_total(self, name: str) -> float:
        """Counter `name` summed over the fleet's replicas (each sums its own workers)."""
        return sum(metric_total(url, name) for url in self.urls())

    def stop(self) -> None:
        try:
            self.whole()
        finally:
            self._pool.shutdown()
        if self.nginx is not None:
            self.nginx.stop()
        for r in self.replicas:
            if r.proc.poll() is None:
                r.proc.terminate()
        for r in self.replicas:
            self._retire(r)
        self.replicas = []

"""Gunicorn settings, read from the environment through the app's own `Config`.

Only `app.config`, `app.listen`, `app.fair_accept` and `app.observability.gunicorn_hooks`
are imported here: they (and `app/__init__.py`) need the standard library and orjson only, so
nothing that opens sockets or loads `ssl` is imported in the master before gevent patches each
worker, and gevent itself is imported in the workers only (`app/gevent_worker.py`).
"""

import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the app package beside this file

from app import fair_accept  # noqa: E402
from app.config import Config, ConfigError  # noqa: E402
from app.observability import gunicorn_hooks as _obs  # noqa: E402


def _env(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


def _int(name: str, default: int) -> int:
    raw = _env(name, str(default))
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"cot-proxy: configuration error: {name}={raw!r}: not an integer") from None


def _config() -> Config:
    """The app's configuration, validated once here in the master: a bad value stops start-up
    with one line instead of workers failing over and over (each worker reads it again)."""
    try:
        return Config.from_env()
    except ConfigError as exc:
        raise SystemExit(f"cot-proxy: configuration error: {exc}") from None


# app/listen.py's rule (HOST, GATEWAY_HOST, PROXY_ADDR; PORT, GATEWAY_PORT, PROXY_ADDR), as Config
# and the Docker HEALTHCHECK (`python -P app/listen.py --probe`) read it.
bind = _config().bind

WORKER_CLASSES = {
    "gevent": "gevent",
    "gunicorn.workers.ggevent.GeventWorker": "gevent",
    "gthread": "gthread",
    "gunicorn.workers.gthread.ThreadWorker": "gthread",
    "sync": "sync",
    "gunicorn.workers.sync.SyncWorker": "sync",
}


def _worker_class() -> str:
    """GUNICORN_WORKER_CLASS, refused with one line unless it is a worker the proxy supports."""
    raw = _env("GUNICORN_WORKER_CLASS", "gevent")
    found = WORKER_CLASSES.get(raw) or WORKER_CLASSES.get(raw.lower())
    if found is None:
        raise SystemExit(
            f"cot-proxy: configuration error: GUNICORN_WORKER_CLASS={raw!r}: use gevent (the default), gthread or sync"
        )
    return found


# gevent: a stream is one greenlet blocked on a socket, so one worker holds
# thousands of slow SSE streams (bench/: 1,000 streams on 2 cores, no errors).
# A sync worker would hold one stream per process; gthread one per thread, with
# far slower time-to-first-chunk under load (shared/reference/baseline.md).
WORKER = _worker_class()
# Gunicorn's gevent worker, but with gevent imported after the fork only (app/gevent_worker.py).
worker_class = "app.gevent_worker.GeventWorker" if WORKER == "gevent" else WORKER
# One worker per core: the proxy is I/O-bound and gevent multiplexes inside a worker.
workers = _int("WEB_CONCURRENCY", os.cpu_count() or 1)  # not multiprocessing: 0.5 MiB in each process
# Open connections per gevent worker; above it new clients wait in the accept backlog.
worker_connections = _int("GUNICORN_WORKER_CONNECTIONS", 2000)
# Threads per gthread worker. Not for sync: Gunicorn turns a sync worker with threads > 1 into gthread.
threads = _int("GUNICORN_THREADS", 64 if WORKER == "gthread" else 1)
# Heartbeat timeout. Async workers beat independently of requests, so long
# streams are safe; only a worker stuck on CPU this long is restarted.
timeout = _int("GUNICORN_TIMEOUT", 120)
# Time for in-flight streams to finish on reload or shutdown.
graceful_timeout = _int("GUNICORN_GRACEFUL_TIMEOUT", 30)
keepalive = _int("GUNICORN_KEEPALIVE", 5)
# Memory safety net: a worker is replaced after 10,000 to 11,000 requests (Gunicorn adds 0..jitter, so
# workers do not all restart at once). The old worker stops accepting, finishes its in-flight
# requests and streams (up to graceful_timeout), then exits; the others keep accepting meanwhile.
# GUNICORN_MAX_REQUESTS=0 disables it; Gunicorn's own --max-requests (GUNICORN_CMD_ARGS) overrides.
max_requests = _int("GUNICORN_MAX_REQUESTS", 10000)
max_requests_jitter = _int("GUNICORN_MAX_REQUESTS_JITTER", 1000)
backlog = _int("GUNICORN_BACKLOG", 2048)

accesslog = os.environ.get("GUNICORN_ACCESS_LOG") or None
# Gunicorn's default (combined) layout, minus what can carry a secret: the request line
# without its query string (`?api_key=...`), and "-" for the Basic-auth user and the Referer.
access_log_format = '%(h)s %(l)s - %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s "-" "%(a)s"'
errorlog = "-"
loglevel = "debug" if _env("DEBUG", "false").lower() == "true" else "info"
# No preload: each worker builds its own app (and HTTP pool) after gevent patched.
preload_app = False
# Gunicorn's control socket is unused; off, so several instances never clash over it.
control_socket_disable = True


# Metrics summed over workers (PROMETHEUS_MULTIPROC_DIR), the OBSERVABILITY_PORT
# listener in the master, and Gunicorn's own lines in LOG_FORMAT.
logger_class = _obs.logger_class()


def child_exit(server: Any, worker: Any) -> None:
    fair_accept.release(worker)
    _obs.child_exit(server, worker)


def pre_fork(server: Any, worker: Any) -> None:
    fair_accept.assign(server, worker)  # its slot in the connection counts (app/fair_accept.py)


def post_fork(server: Any, worker: Any) -> None:
    """Until `Worker.init_signals` a new worker runs the master's signal handlers, which only queue a signal
    in the worker's copy of the master: a SIGTERM (or INT, QUIT) sent then would be lost, and the master
    would wait graceful_timeout for a worker that never heard it. A booting worker holds no requests, so
    such a signal ends it at once; its own handlers replace these a moment later."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        signal.signal(sig, _exit_while_booting)
    try:
        while True:  # one that arrived between fork and here is in the master's queue copy
            if server.SIG_QUEUE.get_nowait() in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
                _exit_while_booting()
    except Exception:  # the queue is empty (queue.Empty), or not a queue in this Gunicorn
        pass
    _obs.post_fork(server, worker)
    from app import wire

    wire.install()  # the response head goes out with the first body bytes
    if WORKER == "gevent":
        fair_accept.install(worker)  # new connections go to the least loaded worker


def _exit_while_booting(*_: object) -> None:
    os._exit(0)


# Drain on SIGTERM: readiness fails first (/readyz answers 503 in every worker), then Gunicorn closes
# its listeners and gives in-flight streams graceful_timeout to finish. Workers learn of it through a
# marker file whose path the master puts in the environment before forking (app/probes.py reads it).
DRAIN_FILE_VAR = "COT_PROXY_DRAIN_FILE"
_drain_dir: str | None = None


def on_starting(server: Any) -> None:
    global _drain_dir
    _obs.on_starting(server)
    fair_accept.create(max(64, 2 * server.cfg.workers))  # TTIN may add workers later
    # Always the master's own: internal plumbing to its workers, not a setting.
    _drain_dir = tempfile.mkdtemp(prefix="cot-proxy-drain-")
    os.environ[DRAIN_FILE_VAR] = os.path.join(_drain_dir, "draining")


def when_ready(server: Any) -> None:
    _obs.when_ready(server)
    stop = server.handle_term

    def handle_term() -> None:
        marker = os.environ.get(DRAIN_FILE_VAR)
        try:
            if marker:
                with open(marker, "w") as f:
                    f.write(str(os.getpid()))
        except OSError as exc:  # never in the way of the stop itself
            server.log.warning("drain marker %s not written: %s", marker, exc)
        server.log.info(
            "draining: /readyz answers 503; listeners close; in-flight requests get %s s", server.cfg.graceful_timeout
        )
        stop()

    server.handle_term = handle_term  # the arbiter looks handlers up on the instance per signal


def on_exit(server: Any) -> None:
    _obs.on_exit(server)
    if _drain_dir is not None:
        shutil.rmtree(_drain_dir, ignore_errors=True)

"""Gunicorn settings, read from the environment.

Do not import `requests`, `app` or anything that imports `ssl` here: the gevent
worker monkey-patches at worker start, and modules imported earlier (in the
master) would keep their blocking versions.
"""

import importlib
import multiprocessing
import os
import shutil
import sys
import tempfile
import types
from pathlib import Path
from typing import Any


def _env(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


def _int(name: str, default: int) -> int:
    raw = _env(name, str(default))
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"cot-proxy: configuration error: {name}={raw!r}: not an integer") from None


def _private_app(name: str) -> str:
    """The app/ folder as a package called `name`, without running app/__init__.py
    (which imports Flask, requests and ssl). Modules loaded through it stay free
    of sockets and TLS, so nothing is imported before gevent patches the workers."""
    package = types.ModuleType(name)
    package.__path__ = [str(Path(__file__).with_name("app"))]
    sys.modules[name] = package
    return name


def _check_app_config() -> None:
    """Validate the app's environment once, in the master: a bad value stops
    start-up with one line instead of workers failing over and over. The
    modules are forgotten afterwards; workers import the app fresh."""
    name = _private_app("_cot_proxy_config_check")
    try:
        module = importlib.import_module(name + ".config")
        try:
            module.Config.from_env()
        except module.ConfigError as exc:
            raise SystemExit(f"cot-proxy: configuration error: {exc}") from None
    finally:
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[key]


_check_app_config()


def _master_module(name: str) -> types.ModuleType:
    """app/<name>.py (standard library only at import) under the private package
    `_cot_proxy_master`, kept loaded: the master uses it."""
    if "_cot_proxy_master" not in sys.modules:
        _private_app("_cot_proxy_master")
    return importlib.import_module("_cot_proxy_master." + name)


def _bind() -> str:
    """app/listen.py's rule (HOST, GATEWAY_HOST, PROXY_ADDR; PORT, GATEWAY_PORT, PROXY_ADDR),
    the same one Config and the Docker HEALTHCHECK follow. After _check_app_config, so `.env` counts."""
    listen = _master_module("listen")
    try:
        return listen.bind(os.environ)
    except listen.ListenAddressError as exc:
        raise SystemExit(f"cot-proxy: configuration error: {exc}") from None


bind = _bind()

WORKER_CLASSES = {
    "gevent": "gevent", "gunicorn.workers.ggevent.GeventWorker": "gevent",
    "gthread": "gthread", "gunicorn.workers.gthread.ThreadWorker": "gthread",
    "sync": "sync", "gunicorn.workers.sync.SyncWorker": "sync",
}


def _worker_class() -> str:
    """GUNICORN_WORKER_CLASS, refused with one line unless it is a worker the proxy supports."""
    raw = _env("GUNICORN_WORKER_CLASS", "gevent")
    found = WORKER_CLASSES.get(raw) or WORKER_CLASSES.get(raw.lower())
    if found is None:
        raise SystemExit(f"cot-proxy: configuration error: GUNICORN_WORKER_CLASS={raw!r}: "
                         "use gevent (the default), gthread or sync")
    return found


# gevent: a stream is one greenlet blocked on a socket, so one worker holds
# thousands of slow SSE streams (bench/: 1,000 streams on 2 cores, no errors).
# A sync worker would hold one stream per process; gthread one per thread, with
# far slower time-to-first-chunk under load (shared/reference/baseline.md).
worker_class = _worker_class()
# One worker per core: the proxy is I/O-bound and gevent multiplexes inside a worker.
workers = _int("WEB_CONCURRENCY", multiprocessing.cpu_count())
# Open connections per gevent worker; above it new clients wait in the accept backlog.
worker_connections = _int("GUNICORN_WORKER_CONNECTIONS", 2000)
# Used only with GUNICORN_WORKER_CLASS=gthread.
threads = _int("GUNICORN_THREADS", 64)
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


def _observability() -> types.ModuleType:
    """app/observability/gunicorn_hooks.py (standard library only at import), kept
    loaded: the master calls its hooks."""
    return _master_module("observability.gunicorn_hooks")


# Metrics summed over workers (PROMETHEUS_MULTIPROC_DIR), the OBSERVABILITY_PORT
# listener in the master, and Gunicorn's own lines in LOG_FORMAT.
_obs = _observability()
logger_class = _obs.logger_class()
child_exit = _obs.child_exit
post_fork = _obs.post_fork

# Drain on SIGTERM: readiness fails first (/readyz answers 503 in every worker), then Gunicorn closes
# its listeners and gives in-flight streams graceful_timeout to finish. Workers learn of it through a
# marker file whose path the master puts in the environment before forking (app/probes.py reads it).
DRAIN_FILE_VAR = "COT_PROXY_DRAIN_FILE"
_drain_dir: str | None = None


def on_starting(server: Any) -> None:
    global _drain_dir
    _obs.on_starting(server)
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
        server.log.info("draining: /readyz answers 503; listeners close; in-flight requests get %s s",
                        server.cfg.graceful_timeout)
        stop()

    server.handle_term = handle_term  # the arbiter looks handlers up on the instance per signal


def on_exit(server: Any) -> None:
    _obs.on_exit(server)
    if _drain_dir is not None:
        shutil.rmtree(_drain_dir, ignore_errors=True)

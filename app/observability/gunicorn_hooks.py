"""Gunicorn master-side observability, used by gunicorn.conf.py.

Standard library only at import (the master must not import what gevent will
patch in the workers); `prometheus_client` is imported inside `when_ready`, only
when OBSERVABILITY_PORT is set. gunicorn.conf.py loads this module under a
private package name, without running app/__init__.py.

- `on_starting`: prepares PROMETHEUS_MULTIPROC_DIR before any worker exists (a
  fresh temporary directory, or the given one emptied of old `*.db` files), so
  every worker writes its metrics there and a scrape sums them.
- `child_exit`: removes a dead worker's live-gauge files (in-flight counts), as
  `prometheus_client.multiprocess.mark_process_dead` does; its counters stay.
- `when_ready`: the OBSERVABILITY_PORT listener, in the master, serving the sum
  (`post_fork` closes the copy of its socket each worker inherits).
- `logger_class`: Gunicorn's own lines in LOG_FORMAT.
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
from typing import Any

from .logformat import make_formatter
from .settings import ObservabilityConfigError, ObservabilitySettings

MULTIPROC_VAR = "PROMETHEUS_MULTIPROC_DIR"
_created_dir: str | None = None
_listener: Any = None


def settings() -> ObservabilitySettings:
    try:
        return ObservabilitySettings.from_env(os.environ)
    except ObservabilityConfigError as exc:
        raise SystemExit(f"cot-proxy: configuration error: {exc}") from None


def prepare_multiproc_dir() -> str:
    """Set PROMETHEUS_MULTIPROC_DIR (inherited by workers) to an empty directory."""
    global _created_dir
    path = os.environ.get(MULTIPROC_VAR) or os.environ.get("prometheus_multiproc_dir")
    if path:
        os.makedirs(path, exist_ok=True)
        for stale in glob.glob(os.path.join(path, "*.db")) + glob.glob(os.path.join(path, "cot_proxy_*.json")):
            os.remove(stale)
    else:
        path = _created_dir = tempfile.mkdtemp(prefix="cot-proxy-metrics-")
    os.environ[MULTIPROC_VAR] = path
    return path


def mark_process_dead(pid: int) -> None:
    """What `prometheus_client.multiprocess.mark_process_dead` does, without importing it."""
    path = os.environ.get(MULTIPROC_VAR)
    if not path:
        return
    for live in glob.glob(os.path.join(path, f"gauge_live*_{pid}.db")):
        try:
            os.remove(live)
        except FileNotFoundError:
            pass


def on_starting(server: Any) -> None:
    path = prepare_multiproc_dir()
    server.log.debug("metrics of all workers in %s", path)


def when_ready(server: Any) -> None:
    global _listener
    s = settings()
    if s.port is None or _listener is not None:
        return
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    from .exposition import start_server

    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    from ..access.settings import AccessSettings

    trusted = AccessSettings.from_env(os.environ).trusted_proxies
    _listener = start_server(s.host, s.port, lambda: registry, s.metrics_allowed_ips, trusted)
    server.log.info("metrics of all workers on http://%s:%d/metrics", s.host, s.port)


def post_fork(server: Any, worker: Any) -> None:
    """A worker must not keep the master's metrics listener open (the port would outlive the master)."""
    if _listener is not None:
        _listener.socket.close()


def child_exit(server: Any, worker: Any) -> None:
    mark_process_dead(worker.pid)


def on_exit(server: Any) -> None:
    if _listener is not None:
        _listener.shutdown()
        _listener.server_close()
    if _created_dir is not None:
        shutil.rmtree(_created_dir, ignore_errors=True)


def logger_class() -> type:
    """Gunicorn's Logger with its handlers' formats replaced by LOG_FORMAT's."""
    from gunicorn.glogging import Logger  # already imported by Gunicorn itself

    log_format = settings().log_format

    class CotProxyLogger(Logger):
        def setup(self, cfg: Any) -> None:
            super().setup(cfg)
            formatter = make_formatter(log_format)
            for logger in (self.error_log, self.access_log):
                for handler in logger.handlers:
                    handler.setFormatter(formatter)

    return CotProxyLogger

"""Gunicorn's gevent worker, with gevent imported in the workers only.

Gunicorn loads the worker class in the master, and `gunicorn.workers.ggevent` imports gevent at its top:
about 5.7 MiB of RSS in a master that never runs a greenlet. `GeventWorker` stands in for Gunicorn's
class until the fork. The master builds it as it builds any worker (the base `Worker.__init__`, plus the
async worker's `worker_connections`), and `init_process`, the new process's first call into the worker,
turns it into Gunicorn's own `GeventWorker`, which then patches, reinits the hub and serves as usual.
"""

from __future__ import annotations

from typing import Any

from gunicorn.workers.base import Worker


class GeventWorker(Worker):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.worker_connections = self.cfg.worker_connections  # as AsyncWorker.__init__ sets it

    def init_process(self) -> None:
        from gunicorn.workers import ggevent

        self.__class__ = ggevent.GeventWorker  # type: ignore[assignment]
        self.init_process()

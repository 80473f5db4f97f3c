"""Noticing a client that hung up while we wait on the upstream.

WSGI only reports a gone client when a write fails, which never happens while
we wait for the upstream's first byte, and happens late on a slow stream. Under
Gunicorn's gevent worker we watch the client socket instead: once the request
body is read, the socket turns readable only when the client closes it. The
watcher then raises `ClientDisconnected` into the request's greenlet, which
unwinds the upstream read, and the upstream connection is closed, so
vLLM/llama.cpp stop generating.

Elsewhere (dev server, gthread) this is a no-op and the failed write is the
signal, as in any WSGI app.
"""

from __future__ import annotations

import socket
from typing import Any

from .errors import ClientDisconnected


def gevent_active() -> bool:
    try:
        from gevent import monkey
    except ImportError:
        return False
    return monkey.is_module_patched("socket")


class DisconnectWatch:
    """Start after the request body is consumed; always `stop()` before returning.

    A libev read watcher on the client's socket, not a greenlet: its callback runs in the hub only
    if the socket turns readable, so a request whose client stays costs one watcher start and stop."""

    def __init__(self) -> None:
        self._watcher: Any = None

    @classmethod
    def start(cls, environ: dict[str, Any], *, watch_client: bool = True) -> DisconnectWatch:
        """`watch_client=False`: the body is still being streamed upstream, which would look like
        client activity: the watch does nothing then."""
        watch = cls()
        sock = environ.get("gunicorn.socket")
        if sock is not None and watch_client and gevent_active():
            import gevent

            watcher = gevent.get_hub().loop.io(sock.fileno(), 1)  # 1: readable
            watcher.start(_readable, watch, sock.fileno(), gevent.getcurrent())
            watch._watcher = watcher
        return watch

    def stop(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.stop()
            watcher.close()


def _readable(watch: DisconnectWatch, fd: int, request_greenlet: Any) -> None:
    """In the hub: readable after the body means the client closed (or pipelined; then it stays).

    Peeks at the TCP stream under any TLS (a TLS socket's `recv` takes no flags) through a real
    socket object that does not own the descriptor (gevent's would wait on EAGAIN, in the hub)."""
    import gevent
    from gevent.monkey import get_original

    watch.stop()
    peek = get_original("socket", "socket")(fileno=fd)
    try:
        gone = peek.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return
    except OSError:
        gone = True
    finally:
        peek.detach()
    if gone:
        gevent.kill(request_greenlet, ClientDisconnected)

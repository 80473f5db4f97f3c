"""Gunicorn's response writer, with the status line and headers sent with the first body bytes.

Why: Gunicorn writes the head and the body in two `send` calls. On this kind of (virtual) box a
send costs 60-100 us of CPU, so a whole JSON answer in one send saves about a tenth of a
proxied request (bench/README.md). A first write of `b""` still sends the head at once, as
before: the relay uses it to start a stream before the upstream's first byte.

`install()` runs in each worker (gunicorn.conf.py `post_fork`); the head's bytes are the ones
Gunicorn's own `send_headers` builds. A Gunicorn without the `_emit_body` hook is left as it is.
"""

from __future__ import annotations

from typing import Any


def install() -> None:
    from gunicorn.http import wsgi

    hooks = hasattr(wsgi.Response, "_emit_body") and hasattr(wsgi.Response, "_response_omits_body")
    if hooks and not issubclass(wsgi.Response, _Coalescing):  # Gunicorn 27 has both
        wsgi.Response = type("Response", (_Coalescing, wsgi.Response), {})


class _Coalescing:
    """Mixed in before `gunicorn.http.wsgi.Response`."""

    _held: bytes | None = None

    def write(self: Any, arg: bytes) -> None:
        if not self.headers_sent and arg and not self._omits_body:
            tosend = self.default_headers()
            tosend.extend(["%s: %s\r\n" % (k, v) for k, v in self.headers])  # noqa: UP031 - Gunicorn's own
            self._held = ("%s\r\n" % "".join(tosend)).encode("latin-1")  # noqa: UP031
            self.headers_sent = True
        super().write(arg)  # type: ignore[misc]
        if self._held is not None:  # nothing was emitted (length reached): the head goes alone
            held, self._held = self._held, None
            self.sock.sendall(held)

    def _emit_body(self: Any, data: bytes) -> None:
        held, self._held = self._held, None
        if held is None:
            super()._emit_body(data)  # type: ignore[misc]
        elif self.chunked:
            self.sock.sendall(b"%s%X\r\n%s\r\n" % (held, len(data), data))
        else:
            self.sock.sendall(held + data)

"""The client's request body, read within MAX_REQUEST_BYTES and REQUEST_BODY_TIMEOUT_SECONDS.

Read straight from `wsgi.input` (Gunicorn has already undone chunked framing), so
the same limits hold with or without a Content-Length:
- over the size limit: 413, and nothing of it goes upstream (a chunked body is
  read whole before anything is sent; a declared length over the limit is
  refused before a byte is read);
- slower than the time limit: 408 (exact under gevent, where the read itself is
  interrupted; per socket read on other workers);
- broken framing (a malformed chunk size): 400 `invalid_body`.
Each such answer asks for `Connection: close` (the dev server honours it);
Gunicorn ignores that header and drops the rest of the body within its
keep-alive timeout (GUNICORN_KEEPALIVE) before closing, so a dribbling client
is still cut off in bounded time.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from io import BytesIO
from typing import IO, Any

import orjson

from .bounds import Bounds
from .disconnect import gevent_active
from .errors import ClientDisconnected, InvalidRequest, PayloadTooLarge, RequestTimeout

READ_SIZE = 64 * 1024
CLOSE = {"Connection": "close"}
MAX_JSON_DEPTH = 128


class RequestBody:
    """One request's body: `read()` it whole, or `stream()` a declared length upstream."""

    def __init__(self, environ: dict[str, Any], bounds: Bounds) -> None:
        self._input: IO[bytes] = environ["wsgi.input"]
        self._socket = environ.get("gunicorn.socket")
        self.limit = bounds.max_request_bytes
        self.timeout = bounds.request_body_timeout
        self._deadline: float | None = None
        self._whole: bytes | None = None
        raw_length = (environ.get("CONTENT_LENGTH") or "").strip()
        self.length: int | None = None
        if raw_length:
            if not raw_length.isdigit():
                raise InvalidRequest("Content-Length is not a number.", code="invalid_body", headers=dict(CLOSE))
            self.length = int(raw_length)
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        self.present = bool(self.length) if self.length is not None else chunked
        if self.length is not None and self.length > self.limit:
            raise self._too_large()

    def read(self) -> bytes:
        """All of it, or 413 / 408 / 400; read once, the same bytes on every call."""
        if self._whole is None:
            self._whole = self._read_whole()
        return self._whole

    def _read_whole(self) -> bytes:
        if not self.present:
            return b""
        parts: list[bytes] = []
        size = 0
        want = self.length
        while want is None or size < want:
            chunk = self._read(READ_SIZE if want is None else min(READ_SIZE, want - size))
            if not chunk:
                if want is not None:
                    raise InvalidRequest(
                        "The request body ended before its Content-Length.", code="invalid_body", headers=dict(CLOSE)
                    )
                break
            size += len(chunk)
            if size > self.limit:
                raise self._too_large()
            parts.append(chunk)
        return b"".join(parts)

    def stream(self) -> SizedStream:
        """A declared-length body, passed upstream as it arrives (uploads never sit whole in memory)."""
        assert self.length is not None
        return SizedStream(self, self.length)

    def _read(self, size: int) -> bytes:
        if self._deadline is None:
            self._deadline = time.monotonic() + self.timeout
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise self._timed_out()
        with self._time_limit(remaining), _mapped_read_errors():
            return self._input.read(size)

    @contextmanager
    def _time_limit(self, seconds: float) -> Iterator[None]:
        if gevent_active():
            import gevent

            timeout = gevent.Timeout(seconds, self._timed_out())
            timeout.start()
            try:
                yield
            finally:
                timeout.close()
            return
        sock = self._socket
        if sock is None:  # Flask's dev server or the test client: no socket to bound
            yield
            return
        previous = sock.gettimeout()
        sock.settimeout(seconds)
        try:
            yield
        except TimeoutError:
            raise self._timed_out() from None
        finally:
            sock.settimeout(previous)

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(
            f"Request body is larger than MAX_REQUEST_BYTES ({self.limit} bytes).", headers=dict(CLOSE)
        )

    def _timed_out(self) -> RequestTimeout:
        return RequestTimeout(
            f"The request body did not arrive within REQUEST_BODY_TIMEOUT_SECONDS ({self.timeout:g} s).",
            headers=dict(CLOSE),
        )


@contextmanager
def _mapped_read_errors() -> Iterator[None]:
    """Gunicorn's parser errors (bad chunk size, missing terminator) are the client's fault."""
    try:
        yield
    except (InvalidRequest, RequestTimeout, ClientDisconnected, TimeoutError):
        raise
    except (ConnectionError, BrokenPipeError):
        raise ClientDisconnected() from None
    except Exception as exc:
        if type(exc).__module__.startswith(("gunicorn.http", "werkzeug")) or isinstance(exc, (ValueError, OSError)):
            raise InvalidRequest(
                f"The request body is malformed ({type(exc).__name__}).", code="invalid_body", headers=dict(CLOSE)
            ) from exc
        raise


class SizedStream:
    """A request body with a known length, so it goes upstream with Content-Length
    rather than chunked (many model servers reject chunked uploads)."""

    def __init__(self, body: RequestBody, length: int) -> None:
        self._body = body
        self._length = length
        self._left = length

    def __len__(self) -> int:
        return self._length

    def read(self, size: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        size = self._left if size is None or size < 0 else min(size, self._left)
        data = self._body._read(size)
        self._left -= len(data)
        return data


def model_in(raw: bytes, content_type: str) -> str | None:
    """The `model` a JSON, multipart or form body names (None if it names none).

    Several different `model` fields are refused: the upstream might read another one."""
    mimetype = content_type.split(";", 1)[0].strip().lower()
    if mimetype == "application/json" or mimetype.endswith("+json"):
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise InvalidRequest("Request body is not valid JSON.", code="invalid_json") from None
        value = obj.get("model") if isinstance(obj, dict) else None
        return value if isinstance(value, str) else None
    if mimetype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        from werkzeug.formparser import parse_form_data

        environ = {
            "wsgi.input": BytesIO(raw),
            "CONTENT_LENGTH": str(len(raw)),
            "CONTENT_TYPE": content_type,
            "REQUEST_METHOD": "POST",
        }
        try:
            _, form, files = parse_form_data(environ, silent=False)
        except Exception:
            raise InvalidRequest("The form body is malformed.", code="invalid_body") from None
        values = set(form.getlist("model"))
        for upload in files.getlist("model"):
            values.add(upload.read(1024).decode("utf-8", "replace"))
        if len(values) > 1:
            raise InvalidRequest("The body names more than one model.", param="model")
        return values.pop() if values else None
    # Any other label: some servers parse the body as JSON whatever it says, so look as they would.
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    value = obj.get("model") if isinstance(obj, dict) else None
    return value if isinstance(value, str) else None


def read_json_object(body: RequestBody, mimetype: str) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 that says what is wrong."""
    if mimetype != "application/json" and not mimetype.endswith("+json"):
        raise InvalidRequest(
            f"Content-Type must be application/json (got {mimetype or 'none'}).", code="invalid_content_type"
        )
    raw = body.read()
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"Request body is not valid JSON: {exc}.", code="invalid_json") from None
    if not isinstance(obj, dict):
        raise InvalidRequest("Request body must be a JSON object.", code="invalid_json")
    # orjson writes at most 254 levels; counting brackets first keeps the usual body at C speed.
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH and json_depth(obj) > MAX_JSON_DEPTH:
        raise InvalidRequest(f"Request body is nested deeper than {MAX_JSON_DEPTH} levels.", code="invalid_json")
    return obj


def json_depth(obj: Any) -> int:
    """How deeply lists and objects nest in `obj` (iterative: no recursion limit)."""
    deepest = 0
    stack = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            value = value.values()
        elif not isinstance(value, list):
            continue
        deepest = max(deepest, depth)
        stack.extend((v, depth + 1) for v in value if isinstance(v, (dict, list)))
    return deepest


def dump_json(obj: Any) -> bytes:
    """orjson refuses what it cannot write (nesting over 254 levels, huge integers): the client's fault."""
    try:
        return right_sized(orjson.dumps(obj))
    except (orjson.JSONEncodeError, TypeError) as exc:
        raise InvalidRequest(f"The request body cannot be relayed: {exc}.", code="invalid_json") from None


def right_sized(raw: bytes) -> bytes:
    """A copy in memory of its own size. orjson (3.12 on) leaves its output in its write buffer, at least
    4 KiB and grown by powers of two; a relayed body stays referenced until the answer ends (8 KiB per open
    stream for a 1 KB request), a stored response until it expires. The copy costs about 0.2 us per KB."""
    return bytes(memoryview(raw))

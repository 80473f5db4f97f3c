"""Incremental Server-Sent Events parsing that keeps each event's exact bytes.

Upstream TCP chunks do not line up with events: one event may arrive in many
chunks and one chunk may hold many events. `SSEDecoder.feed` returns every
event completed by the bytes so far and keeps only the incomplete rest, so an
event is passed on the moment its blank line arrives. Lines may end in `\\n`,
`\\r\\n` or `\\r` (the SSE spec, and the `openai` SDK's decoder, accept all three);
a lone `\\r` at the end of a chunk completes its line at once, and a `\\n` that
follows in the next chunk is recognised as the rest of that line break.

An untouched event is re-emitted byte for byte (`Event.raw`); only an event a
transform changed is re-serialised.
"""

from __future__ import annotations

from typing import Any

import orjson

from .errors import UpstreamBadResponse

_EOL = (b"\n", b"\r")


class Event:
    """One SSE event: its raw bytes, with fields and JSON parsed on demand (each at most once).

    Steps ask for as little as they need: `raw` (bytes, free), `data_bytes` (the data field, not decoded),
    `data` (decoded), `json()` (parsed from the bytes). Whatever one step parsed, the next reuses."""

    __slots__ = ("_raw", "_fields", "_data", "_json", "_parsed")

    def __init__(self, raw: bytes) -> None:
        self._raw = raw
        self._fields: tuple[bytes | None, str | None, bool] | None = None
        self._data: str | None = None
        self._json: Any = None
        self._parsed = False

    @classmethod
    def from_json(cls, obj: Any) -> Event:
        event = cls(b"data: " + orjson.dumps(obj) + b"\n\n")
        event._json, event._parsed = obj, True
        return event

    @classmethod
    def from_data(cls, data: str) -> Event:
        return cls(b"data: " + data.encode() + b"\n\n")

    @property
    def raw(self) -> bytes:
        return self._raw

    def _parse(self) -> tuple[bytes | None, str | None, bool]:
        """(data bytes, event name, is a comment only), parsed once."""
        if self._fields is not None:
            return self._fields
        body = self._raw.rstrip(b"\r\n")
        if body.startswith(b"data:") and b"\n" not in body and b"\r" not in body:
            value = body[5:]  # the usual event: one data line
            self._fields = (value[1:] if value[:1] == b" " else value, None, False)
            return self._fields
        data: list[bytes] = []
        name: str | None = None
        comment = True
        for line in body.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n"):
            if not line or line[:1] == b":":
                continue
            comment = False
            key, sep, value = line.partition(b":")
            if sep and value[:1] == b" ":
                value = value[1:]
            if key == b"data":
                data.append(value)
            elif key == b"event":
                name = value.decode("utf-8", "replace")
        self._fields = (b"\n".join(data) if data else None, name, comment)
        return self._fields

    @property
    def data_bytes(self) -> bytes | None:
        """The `data` lines joined with `\\n`, undecoded, or None when there is none."""
        return self._parse()[0]

    @property
    def data(self) -> str | None:
        """The `data` lines joined with `\\n`, or None when there is none."""
        if self._data is None:
            raw = self._parse()[0]
            if raw is None:
                return None
            self._data = raw.decode("utf-8", "replace")
        return self._data

    @property
    def name(self) -> str | None:
        """The `event:` field, if any."""
        return self._parse()[1]

    @property
    def is_done(self) -> bool:
        data = self._parse()[0]
        return data is not None and data.startswith(b"[DONE]")

    @property
    def is_comment(self) -> bool:
        return self._parse()[2]

    @property
    def parsed(self) -> bool:
        """`json()` ran already: asking again is free, so a byte-level check would cost more than it saves."""
        return self._parsed

    def json(self) -> Any:
        """The `data` as JSON, or None when it is absent or not JSON (cached)."""
        if not self._parsed:
            self._parsed = True
            data = self._parse()[0]
            if data is not None and data[:1] in (b"{", b"[") and not data.startswith(b"[DONE]"):
                try:
                    self._json = orjson.loads(data)  # bytes: no decoding first
                except orjson.JSONDecodeError:
                    try:  # not UTF-8: parse it as `data` reads it (invalid bytes replaced)
                        self._json = None if data.isascii() else orjson.loads(self.data)
                    except orjson.JSONDecodeError:
                        self._json = None
        return self._json

    def set_json(self, obj: Any) -> None:
        """Replace the data with `obj`; other fields of the event are dropped."""
        self._raw = b"data: " + orjson.dumps(obj) + b"\n\n"
        self._fields = self._data = None
        self._json, self._parsed = obj, True


class SSEDecoder:
    """Turns a byte stream into complete `Event`s; holds back only the incomplete rest."""

    def __init__(self, max_event_bytes: int | None = None) -> None:
        self.max_event_bytes = max_event_bytes
        """An unterminated event longer than this raises `UpstreamBadResponse` (bounded memory)."""
        self._buf = bytearray()
        self._event_start = 0  # where the current event begins in _buf
        self._scan = 0  # where to look for the next line end
        self._line_start = 0  # where the current line begins
        self._skip_lf = False  # last chunk ended in \r: a leading \n belongs to it

    def feed(self, chunk: bytes) -> list[Event]:
        if not chunk:
            return []
        if (
            not self._buf
            and not self._skip_lf
            and type(chunk) is bytes
            and chunk[-2:] == b"\n\n"
            and chunk.find(b"\n\n") == len(chunk) - 2
            and chunk[:1] != b"\n"
            and b"\r" not in chunk
        ):
            # The usual chunk: exactly one whole event, nothing held before it (what the scan below finds).
            return [Event(chunk)]
        return self._feed_scan(chunk)

    def _feed_scan(self, chunk: bytes) -> list[Event]:
        """Any other chunk: scanned line by line, out of `feed` so the usual chunk's path stays one test."""
        if self._skip_lf:
            chunk = self._after_cr(chunk)
        buf = self._buf
        buf += chunk
        events = self._scan_lines(buf)
        if self._event_start:
            del buf[: self._event_start]
            self._scan -= self._event_start
            self._line_start -= self._event_start
            self._event_start = 0
        if self.max_event_bytes is not None and len(buf) > self.max_event_bytes:
            raise UpstreamBadResponse(
                f"The upstream sent an event longer than {self.max_event_bytes} bytes (MAX_SSE_EVENT_BYTES).",
                code="upstream_event_too_large",
            )
        return events

    def _after_cr(self, chunk: bytes) -> bytes:
        """The last chunk ended in `\\r`: a leading `\\n` here is the rest of that line break, not a new line."""
        self._skip_lf = False
        if chunk[:1] != b"\n":
            return chunk
        buf = self._buf
        if self._event_start != len(buf):
            # Inside an event: the \r\n ends its line, kept whole in the event's bytes.
            buf += b"\n"
            self._scan = self._line_start = len(buf)
        # Otherwise the \r closed an event; its \n is a stray byte of the terminator.
        return chunk[1:]

    def _scan_lines(self, buf: bytearray) -> list[Event]:
        """Every event a blank line completes from `_scan` on; leaves the positions at the unfinished rest."""
        events: list[Event] = []
        n = len(buf)
        i = self._scan
        while True:
            j = _find_eol(buf, i, n)
            if j < 0:
                self._scan = n
                return events
            end = j + 1
            if buf[j] == 13:  # \r
                if end < n:
                    if buf[end] == 10:
                        end += 1
                else:
                    self._skip_lf = True
            if j == self._line_start:  # empty line: the event is complete
                if j > self._event_start:
                    events.append(Event(bytes(buf[self._event_start : end])))
                self._event_start = end
            self._line_start = end
            i = end

    def pending(self) -> bytes:
        """Bytes of an event not yet terminated (lost if the stream ends here)."""
        return bytes(self._buf)


def _find_eol(buf: bytearray, start: int, end: int) -> int:
    lf = buf.find(b"\n", start, end)
    cr = buf.find(b"\r", start, lf if lf >= 0 else end)
    return cr if cr >= 0 else lf


def may_have_key(raw: bytes, quoted: bytes) -> bool:
    """Whether JSON text `raw` may hold the object key `quoted` (e.g. `b'"usage"'`) anywhere.

    False is certain: a key is written either as those bytes or with a `\\u` escape (the only escape
    that spells a letter or digit; `quoted` must hold only those between its quotes), and a JSON string
    cannot span SSE lines. So an event without either needs no parsing to know it lacks the key."""
    return quoted in raw or b"\\u" in raw

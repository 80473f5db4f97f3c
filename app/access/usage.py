"""Usage accounting: token estimates, and the writer that batches records off the request path.

A request hands its record to `UsageWriter.record`, which only appends to a
bounded in-memory buffer; a background thread (a greenlet under gevent)
writes the buffer to the key store every USAGE_FLUSH_SECONDS in one
transaction. If the store is down, records wait (up to the buffer's bound,
then the oldest are dropped and counted) and are retried next round.

Under Gunicorn each record is also appended to a spool file of the worker's own
in PROMETHEUS_MULTIPROC_DIR (`Spool`) before it is buffered: the usage of a
stream is spooled before its last chunk leaves, so a worker killed outright
(SIGKILL, the OOM killer, a replica's container killed) loses no record of a
request its client saw complete. A worker in that directory (the master's next
worker, or the replica's successor on the same volume; at start and every 5 s)
writes the spools of dead workers to the store, skipping records already there,
so each request is still recorded exactly once.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import glob
import json
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any

log = logging.getLogger("cot_proxy.guard")

CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD = 4


def estimate_text_tokens(chars: int) -> int:
    return math.ceil(chars / CHARS_PER_TOKEN) if chars > 0 else 0


def _content_chars(content: Any) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        n = 0
        for part in content:
            if isinstance(part, str):
                n += len(part)
            elif isinstance(part, int):
                n += CHARS_PER_TOKEN  # a token id
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                n += len(part["text"])
            elif isinstance(part, dict) and part.get("type") in ("tool_use", "tool_result"):  # Anthropic blocks
                n += len(str(part.get("input", ""))) + _content_chars(part.get("content"))
            elif isinstance(part, list):
                n += _content_chars(part)
        return n
    return 0


def _chat_prompt_tokens(body: dict[str, Any]) -> int:
    """Chat: each message's content and its tool calls' arguments, plus a per-message overhead."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return 0
    tokens = 3
    for m in messages:
        if isinstance(m, dict):
            chars = _content_chars(m.get("content"))
            for call in m.get("tool_calls") or ():
                if isinstance(call, dict) and isinstance(call.get("function"), dict):
                    chars += len(str(call["function"].get("arguments", "")))
            tokens += MESSAGE_OVERHEAD + estimate_text_tokens(chars)
    return tokens


def _messages_prompt_tokens(body: dict[str, Any]) -> int:
    """Anthropic: the system prompt apart, content as blocks."""
    messages = body.get("messages")
    tokens = 3 + estimate_text_tokens(_content_chars(body.get("system")))
    for m in messages if isinstance(messages, list) else ():
        if isinstance(m, dict):
            tokens += MESSAGE_OVERHEAD + estimate_text_tokens(_content_chars(m.get("content")))
    return tokens


def _responses_prompt_tokens(body: dict[str, Any]) -> int:
    """OpenAI Responses: instructions, and input as a string or items."""
    given = body.get("input")
    items = given if isinstance(given, list) else [{"content": given}]
    tokens = 3 + estimate_text_tokens(_content_chars(body.get("instructions")))
    for item in items:
        if isinstance(item, dict):
            chars = sum(_content_chars(item.get(k)) for k in ("content", "output", "arguments"))
            tokens += MESSAGE_OVERHEAD + estimate_text_tokens(chars)
    return tokens


# API family -> its prompt estimate; a family not here (models, files...) has no prompt to count.
_PROMPT_TOKENS: dict[str, Callable[[dict[str, Any]], int]] = {
    "chat": _chat_prompt_tokens,
    "messages": _messages_prompt_tokens,
    "responses": _responses_prompt_tokens,
    "completions": lambda body: estimate_text_tokens(_content_chars(body.get("prompt"))),
    "embeddings": lambda body: estimate_text_tokens(_content_chars(body.get("input"))),
}


def estimate_prompt_tokens(family: str, body: Any) -> int:
    """A rough prompt size (4 characters a token), for admission against a tokens-per-minute limit."""
    estimate = _PROMPT_TOKENS.get(family)
    if estimate is None or not isinstance(body, dict):
        return 0
    return estimate(body)


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def estimate_reserve(family: str, body: Any, prompt: int, *, cap: int, max_n: int) -> int:
    """What a request may spend, as far as it says: the prompt estimate plus its output limit
    (`max_completion_tokens`, else `max_tokens`, at most `cap`) times the choices it asks for
    (`n`, or `best_of` for completions, at most `max_n`); at least 1 token. Held against a key's
    budget while the request runs. Without an output limit only the prompt is held."""
    completion = 0
    if family in ("chat", "completions", "messages", "responses") and isinstance(body, dict):
        key = {"chat": "max_completion_tokens", "responses": "max_output_tokens"}.get(family)
        limit = _count(body.get(key)) if key else None
        if limit is None:
            limit = _count(body.get("max_tokens"))
        if limit is not None:
            choices = _count(body.get("n")) or 1
            if family == "completions":
                choices = max(choices, _count(body.get("best_of")) or 1)
            completion = min(limit, cap) * min(choices, max_n)
    return max(prompt + completion, 1)


def output_chars(obj: Any) -> int:
    """Characters of generated text in a chat/completions answer or stream chunk."""
    if not isinstance(obj, dict):
        return 0
    n = 0
    for choice in obj.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        if isinstance(choice.get("text"), str):
            n += len(choice["text"])
        for part in (choice.get("message"), choice.get("delta")):
            if isinstance(part, dict):
                for name in ("content", "reasoning_content", "reasoning"):
                    if isinstance(part.get(name), str):
                        n += len(part[name])
                for call in part.get("tool_calls") or ():
                    if isinstance(call, dict) and isinstance(call.get("function"), dict):
                        n += len(str(call["function"].get("arguments") or ""))
    return n


SPOOL_GLOB = "usage-spool-*.jsonl"
ORPHAN_SCAN_SECONDS = 5.0
"""How often a running writer looks for spools of workers that died after it started."""
REPLAYED = "_replayed"
"""Marks a record read back from a dead worker's spool: the store skips it if it already holds it
(the worker may have died between writing a batch and removing its spool)."""


class Spool:
    """This worker's journal of records not yet in the store: files in `directory`, one line a record.

    Each file is held under an exclusive `flock` while its worker lives (the kernel drops it when the
    process dies, however it dies), so another worker can take over exactly the files of dead ones, also
    across replicas sharing a volume on one host. A flush starts a new file (`rotate`) and removes the
    old ones once their records are in the store (`written`)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._file: Spooled = self._open()
        self._flushing: list[Spooled] = []

    def _open(self) -> Spooled:
        """A new file, locked before it gets a name `orphans` looks for (so none takes it in between)."""
        name = f"usage-spool-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
        hidden, path = os.path.join(self.directory, "." + name), os.path.join(self.directory, name)
        f = open(hidden, "ab")  # noqa: SIM115 - open for the worker's life, closed in `written`/`close`
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(hidden, path)
        return Spooled(f, path)

    def append(self, rec: dict[str, Any]) -> None:
        """One write(2): in the kernel once it returns, so it outlives this process."""
        os.write(self._file.f.fileno(), json.dumps(rec, default=_json_default).encode() + b"\n")

    def rotate(self) -> None:
        """Records from here on go to a new file; the current one waits for `written`."""
        self._flushing.append(self._file)
        self._file = self._open()

    def written(self) -> None:
        """Everything rotated so far is in the store: remove those files."""
        for spooled in self._flushing:
            spooled.remove()
        self._flushing = []

    def close(self, flushed: bool) -> None:
        """At exit: with everything in the store, no file is left behind; else they wait for a successor."""
        for spooled in [*self._flushing, self._file]:
            if flushed:
                spooled.remove()
            else:
                spooled.f.close()

    @staticmethod
    def orphans(directory: str) -> list[tuple[Spooled, list[dict[str, Any]]]]:
        """The files of dead workers (their lock is free), now locked by us, with their records."""
        out = []
        for path in sorted(glob.glob(os.path.join(directory, SPOOL_GLOB))):
            try:
                f = open(path, "rb+")  # noqa: SIM115 - kept locked until its records are written
            except OSError:
                continue  # taken and removed by another worker meanwhile
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                f.close()  # a live worker's
                continue
            if not os.path.exists(path):
                f.close()  # replayed and removed by another worker between our glob and our lock
                continue
            records = []
            for line in f.read().splitlines():
                with contextlib.suppress(ValueError):
                    rec = json.loads(line)
                    if isinstance(rec.get("created_at"), str):
                        rec["created_at"] = datetime.fromisoformat(rec["created_at"])
                    records.append({**rec, REPLAYED: True})
            out.append((Spooled(f, path), records))
        return out


@dataclass
class Spooled:
    """One open, locked spool file."""

    f: IO[bytes]
    path: str

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        self.f.close()


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _spool_dir() -> str | None:
    """Gunicorn's directory shared by a replica's workers (PROMETHEUS_MULTIPROC_DIR), if there is one."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir")
    return path if path and os.path.isdir(path) else None


class UsageWriter:
    """Buffers usage records and writes them to the store in batches, from a background thread."""

    def __init__(
        self,
        write: Callable[[list[dict[str, Any]]], Any],
        flush_seconds: float = 1.0,
        max_buffer: int = 20_000,
        spool_dir: str | None = None,
    ) -> None:
        self._write = write
        self.flush_seconds = max(flush_seconds, 0.05)
        self.max_buffer = max_buffer
        self._buffer: list[dict[str, Any]] = []
        self._lock = threading.Condition(threading.Lock())
        self._write_lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopped = False
        self.dropped = 0
        self.written = 0
        self.received = 0
        self.replayed = 0
        directory = spool_dir or _spool_dir()
        self._spool: Spool | None = None
        self._orphans: list[tuple[Spooled, list[dict[str, Any]]]] = []
        if directory:
            try:
                self._spool = Spool(directory)
                self._orphans = Spool.orphans(directory)
            except OSError as exc:  # an unwritable directory: buffer in memory only, as without one
                log.warning(
                    "usage spool in %s unusable (%s): records live in memory until written",
                    directory,
                    type(exc).__name__,
                )
        if self._orphans:
            self._start()

    def _start(self) -> None:
        with self._lock:
            start = self._thread is None and not self._stopped
            if start:
                self._thread = threading.Thread(target=self._run, name="usage-writer", daemon=True)
        if start:
            self._thread.start()
            atexit.register(self.close)

    def _replay(self) -> None:
        """Write what dead workers spooled (the store skips what it already holds); kept if the store is down."""
        while self._orphans:
            spooled, records = self._orphans[0]
            if records:
                self._write(records)
                self.replayed += len(records)
                log.info("usage: wrote %d record(s) a stopped worker had spooled", len(records))
            spooled.remove()
            self._orphans.pop(0)

    def record(self, rec: dict[str, Any]) -> None:
        """Queue one record; never blocks on the database."""
        with self._lock:  # spooled and buffered together: a flush's rotation never splits the two
            if self._spool is not None:
                try:
                    self._spool.append(rec)
                except OSError as exc:  # a full disk: the record still goes to the store from memory
                    log.warning("usage record not spooled (%s)", type(exc).__name__)
            self._buffer.append(rec)
            self.received += 1
            self._lock.notify_all()
            if len(self._buffer) > self.max_buffer:
                excess = len(self._buffer) - self.max_buffer
                del self._buffer[:excess]
                self.dropped += excess
                log.warning("usage buffer full: dropped %d oldest records (%d so far)", excess, self.dropped)
        self._start()

    def wait_received(self, count: int, timeout: float) -> bool:
        """Block until `count` records have been handed over in all (for tests and shutdown checks)."""
        with self._lock:
            return self._lock.wait_for(lambda: self.received >= count, timeout)

    def pending(self) -> int:
        return len(self._buffer)

    def flush(self) -> bool:
        """Write everything buffered now (in the caller). True if nothing is left pending."""
        with self._write_lock:
            with self._lock:
                batch, self._buffer = self._buffer, []
                if batch and self._spool is not None:
                    self._spool.rotate()
            if not batch:
                return True
            try:
                self._write(batch)
                self.written += len(batch)
                if self._spool is not None:
                    self._spool.written()
                return True
            except Exception as exc:  # the store is down: keep the records for the next round
                log.warning("usage records not written yet (%d pending): %s", len(batch), type(exc).__name__)
                with self._lock:
                    self._buffer[:0] = batch
                    if len(self._buffer) > self.max_buffer:
                        excess = len(self._buffer) - self.max_buffer
                        del self._buffer[:excess]
                        self.dropped += excess
                return False

    def _run(self) -> None:
        next_scan = time.monotonic() + ORPHAN_SCAN_SECONDS
        while not self._stopped:
            if self._spool is not None and time.monotonic() >= next_scan:
                # Also files orphaned after this worker started: a worker of a replica that shares this
                # directory killed at its graceful timeout, or a sibling killed by the OOM killer.
                next_scan = time.monotonic() + ORPHAN_SCAN_SECONDS
                with contextlib.suppress(OSError):
                    self._orphans += Spool.orphans(self._spool.directory)
            if self._orphans:
                try:
                    self._replay()
                except Exception as exc:  # the store is down: kept (and locked) for the next round
                    log.warning("usage spools of stopped workers not written yet: %s", type(exc).__name__)
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # pragma: no cover - flush already catches; keep the thread alive regardless
                log.exception("usage writer failed")
                time.sleep(self.flush_seconds)

    def close(self) -> None:
        """Final flush (at exit). Records the store did not take stay spooled for the next worker."""
        self._stopped = True
        self._wake.set()
        flushed = self.flush()
        with self._lock:
            spool, self._spool = self._spool, None
        if spool is not None:
            spool.close(flushed)

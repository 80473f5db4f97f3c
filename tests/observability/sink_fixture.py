"""A user sink, loaded by dotted path (COMPLETION_SINKS) in the tests."""

from __future__ import annotations

import threading
from typing import Any

RECORDS: list[dict[str, Any]] = []
ARRIVED = threading.Event()


class ListSink:
    name = "list"

    def handle(self, record: dict[str, Any]) -> None:
        RECORDS.append(record)
        ARRIVED.set()

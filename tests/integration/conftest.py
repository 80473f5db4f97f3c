"""Fixtures of the trust tests: one hostile upstream per module, reset for each test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes.hostile_upstream import HostileUpstream


@pytest.fixture(scope="module")
def upstream() -> Iterator[HostileUpstream]:
    """The module's raw-socket upstream (records request lines as sent; see tests/fakes/hostile_upstream.py)."""
    server = HostileUpstream().start()
    yield server
    server.stop()


@pytest.fixture
def up(upstream: HostileUpstream) -> HostileUpstream:
    upstream.reset()
    return upstream

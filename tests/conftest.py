"""Shared fixtures: a real fake upstream, the app in proxy and echo mode, a live HTTP server.

Fixtures only: helpers (`proxy_config`, `LiveServer`, `Gunicorn`, ...) are in tests/support.py.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import settings

from app import create_app
from app.config import Config
from tests.fakes.openai_upstream import FakeUpstream
from tests.fuzz import support as fuzz
from tests.support import LiveServer, proxy_config  # helpers live in tests/support.py; import them from there

# Property tests draw the same cases on every run and keep no example database (.hypothesis/): a failure
# is a real regression, not a new draw, and parallel runs share no files. HYPOTHESIS_PROFILE=random draws new
# cases (reproduce one with `--hypothesis-seed`). A test's own @settings still set its number of examples.
settings.register_profile("cot-proxy", derandomize=True, database=None, deadline=None, print_blob=True)
settings.register_profile("random", derandomize=False, database=None, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "cot-proxy"))


@pytest.fixture(scope="session")
def _upstream_server() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def module_upstream() -> Iterator[FakeUpstream]:
    """A fake upstream of the module's own, for module-scoped proxies (Gunicorn)."""
    server = FakeUpstream().start()
    yield server
    server.stop()


@pytest.fixture
def upstream(_upstream_server: FakeUpstream) -> FakeUpstream:
    _upstream_server.reset()
    return _upstream_server


@pytest.fixture
def app(upstream: FakeUpstream):
    return create_app(proxy_config(upstream))


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def echo_client():
    return create_app(Config()).test_client()


@pytest.fixture
def live(app) -> Iterator[LiveServer]:
    server = LiveServer(app)
    yield server
    server.stop()


@pytest.fixture
def live_echo() -> Iterator[LiveServer]:
    server = LiveServer(create_app(Config()))
    yield server
    server.stop()


# -- the end-of-run summaries: here, not in tests/fuzz or tests/seeds, since pytest-xdist's controller
# loads only this conftest.py; fuzz case counts come from the workers (`workeroutput`).


class _FuzzCountsFromWorkers:
    def pytest_testnodedown(self, node: Any, error: object) -> None:
        fuzz.add_counts(getattr(node, "workeroutput", {}).get("fuzz_counts", {}))


def pytest_configure(config: pytest.Config) -> None:
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_FuzzCountsFromWorkers(), "cot-proxy-fuzz-counts")


def pytest_sessionfinish(session: pytest.Session) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker
        workeroutput["fuzz_counts"] = fuzz.counts()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    fuzz.write_summary(terminalreporter)
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if "tests/seeds/" in r.nodeid]
    if skipped:
        terminalreporter.section("seed tests skipped")
        for report in skipped:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            terminalreporter.line(f"{report.nodeid}: {reason}")

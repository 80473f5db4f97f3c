"""Seed tests: say why any of them was skipped, at the end of the run, whatever the -r options."""

from __future__ import annotations


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if "tests/seeds/" in r.nodeid]
    if not skipped:
        return
    terminalreporter.section("seed tests skipped")
    for report in skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        terminalreporter.line(f"{report.nodeid}: {reason}")

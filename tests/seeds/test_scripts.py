"""The seed scripts users run directly (./build.sh, ./examples/*.sh): executable in git, valid bash, and
clean under shellcheck."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.seeds import tools
from tests.support import ROOT

SCRIPTS = ["build.sh", "examples/chat.sh", "examples/stream.sh"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_executable_and_parses(script):
    path = ROOT / script
    assert os.access(path, os.X_OK), f"{script} is not executable"
    assert path.read_text().startswith("#!/usr/bin/env bash\n")
    tracked = subprocess.run(["git", "ls-files", "-s", script], cwd=ROOT, capture_output=True, text=True, timeout=30)
    if tracked.returncode == 0 and tracked.stdout:
        assert tracked.stdout.startswith("100755 "), f"{script} is committed without its executable bit"
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True, timeout=30).returncode == 0


def test_shellcheck_clean():
    shellcheck = tools.command("shellcheck", "shellcheck")
    done = subprocess.run(
        [shellcheck, "--severity=style", *SCRIPTS], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr

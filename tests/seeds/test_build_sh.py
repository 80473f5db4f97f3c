"""build.sh as the Livepeer gateway proxy's users run it (TAG, REGISTRY, PUSH), with a fake `docker`
first on PATH that records every call (there is no Docker engine here)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

FAKE_DOCKER = """#!/bin/sh
# fake docker: one JSON line per call (its arguments and working directory)
"{python}" - "$@" <<'PY'
import json, os, sys
with open(os.environ["FAKE_DOCKER_LOG"], "a") as fh:
    fh.write(json.dumps({"args": sys.argv[1:], "cwd": os.getcwd()}) + "\\n")
PY
if [ "$1" = "build" ] && [ -n "${FAKE_DOCKER_FAIL_BUILD:-}" ]; then echo "build failed" >&2; exit 1; fi
exit 0
"""


@pytest.fixture
def fake(tmp_path: Path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    docker = bin_dir / "docker"
    docker.write_text(FAKE_DOCKER.replace("{python}", sys.executable))
    docker.chmod(0o755)
    log = tmp_path / "docker.log"

    def run(
        env: dict[str, str] | None = None,
        cwd: Path = ROOT,
        argv: list[str] | None = None,
    ) -> tuple[subprocess.CompletedProcess, list[dict]]:
        full = {k: v for k, v in os.environ.items() if k not in ("TAG", "REGISTRY", "PUSH", "IMAGE_NAME", "DOCKER")}
        full.update({"PATH": f"{bin_dir}{os.pathsep}{full.get('PATH', '')}", "FAKE_DOCKER_LOG": str(log)})
        full.update(env or {})
        if log.exists():
            log.unlink()
        proc = subprocess.run(argv or ["./build.sh"], cwd=cwd, env=full, capture_output=True, text=True, timeout=30)
        calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        return proc, calls

    return run


def test_local_build_tag_latest(fake):
    proc, calls = fake()
    assert proc.returncode == 0, proc.stderr
    assert [c["args"] for c in calls] == [["build", "-t", "cot-proxy:latest", "."]]
    assert calls[0]["cwd"] == str(ROOT)  # the Dockerfile's folder
    assert "Image built successfully: cot-proxy:latest" in proc.stdout


def test_custom_tag_and_registry(fake):
    _, calls = fake({"TAG": "v1.0.0"})
    assert [c["args"] for c in calls] == [["build", "-t", "cot-proxy:v1.0.0", "."]]
    _, calls = fake({"REGISTRY": "myregistry.example.com/", "TAG": "v1.0.0"})
    assert [c["args"] for c in calls] == [["build", "-t", "myregistry.example.com/cot-proxy:v1.0.0", "."]]


def test_build_and_push(fake):
    proc, calls = fake({"REGISTRY": "myregistry.example.com", "PUSH": "true"})
    assert proc.returncode == 0, proc.stderr
    image = "myregistry.example.com/cot-proxy:latest"
    assert [c["args"] for c in calls] == [["build", "-t", image, "."], ["push", image]]
    assert "Image pushed successfully." in proc.stdout


def test_empty_values_count_as_unset(fake):
    _, calls = fake({"TAG": "", "REGISTRY": "", "PUSH": ""})
    assert [c["args"] for c in calls] == [["build", "-t", "cot-proxy:latest", "."]]


def test_failed_build_is_not_pushed(fake):
    proc, calls = fake({"PUSH": "true", "FAKE_DOCKER_FAIL_BUILD": "1"})
    assert proc.returncode != 0
    assert [c["args"][0] for c in calls] == ["build"]


@pytest.mark.parametrize(
    "env, words", [({"PUSH": "yes"}, "PUSH=yes"), ({"TAG": "v1 0"}, "TAG=v1 0"), ({"TAG": "-x"}, "TAG=-x")]
)
def test_bad_values_stop_before_docker_runs(fake, env, words):
    proc, calls = fake(env)
    assert proc.returncode == 2 and words in proc.stderr and calls == []


def test_runs_from_another_folder(fake, tmp_path):
    copy = tmp_path / "elsewhere"
    copy.mkdir()
    proc, calls = fake(cwd=copy, argv=[str(ROOT / "build.sh")])
    assert proc.returncode == 0, proc.stderr
    assert calls[0]["cwd"] == str(ROOT)


def test_make_image_runs_build_sh(fake):
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    proc, calls = fake({"TAG": "v2", "REGISTRY": "reg.example"}, argv=["make", "image"])
    assert proc.returncode == 0, proc.stderr
    assert [c["args"] for c in calls] == [["build", "-t", "reg.example/cot-proxy:v2", "."]]

"""The inference gateway's Bruno collection (bruno/: `GET endpoints`, `POST endpoints`, a `local`
environment), run for real with Bruno's CLI from the npm registry: against a proxy in echo mode and
against one in front of the fake upstream, each started with .env.example's values (what an inference
gateway user has after `cp .env.example .env`; the second also sets BACKEND_URL).

The CLI is installed once into .cache/bruno-cli (git-ignored by its own .gitignore); BRUNO_CLI may name
a `bru` to use instead. Without npm or the registry the tests are skipped saying so, except under
CI=true, where they fail."""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from dotenv import dotenv_values

from tests.fakes.openai_upstream import FakeUpstream
from tests.seeds import tools
from tests.support import ROOT, Gunicorn

BRUNO_CLI = "@usebruno/cli@4.1.0"
CACHE = ROOT / ".cache"
COLLECTION = ROOT / "bruno"
NOT_FROM_ENV_FILE = ("HOST", "PORT", "WEB_CONCURRENCY")  # the harness picks a free port and one worker


def _installed(prefix: Path) -> Path | None:
    bru = prefix / "node_modules" / ".bin" / "bru"
    package = prefix / "node_modules" / "@usebruno" / "cli" / "package.json"
    if bru.exists() and package.exists():
        if json.loads(package.read_text()).get("version") == BRUNO_CLI.rsplit("@", 1)[1]:
            return bru
    return None


@pytest.fixture(scope="session")
def bru() -> Path:
    given = os.environ.get("BRUNO_CLI")
    if given:
        return Path(given)
    npm = shutil.which("npm")
    if npm is None:
        tools.unavailable("npm is not installed, so Bruno's CLI cannot be (apt-get install -y npm)")
    prefix = CACHE / "bruno-cli"
    prefix.mkdir(parents=True, exist_ok=True)
    (CACHE / ".gitignore").write_text("# test tools (tests/seeds/test_bruno.py); never committed\n*\n")
    with open(CACHE / "bruno-cli.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one install at a time, whoever runs the suite
        found = _installed(prefix)
        if found is not None:
            return found
        done = subprocess.run(
            [
                npm,
                "install",
                "--prefix",
                str(prefix),
                "--no-audit",
                "--no-fund",
                "--no-save",
                "--loglevel=error",
                BRUNO_CLI,
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
        found = _installed(prefix)
        if done.returncode == 0 and found is not None:
            return found
        ping = subprocess.run([npm, "ping"], capture_output=True, text=True, timeout=60)
        if ping.returncode != 0:
            tools.unavailable(
                f"the npm registry is unavailable, so {BRUNO_CLI} cannot be installed: "
                f"{(ping.stderr or ping.stdout).strip().splitlines()[-1:]}"
            )
        pytest.fail(f"npm install {BRUNO_CLI} failed:\n{done.stdout}\n{done.stderr}")


def env_file_values(**extra: str) -> dict[str, str]:
    values = {k: v or "" for k, v in dotenv_values(ROOT / ".env.example").items() if k not in NOT_FROM_ENV_FILE}
    values.update(extra)
    return values


@pytest.fixture(scope="module")
def backend() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def echo_proxy() -> Iterator[Gunicorn]:
    g = Gunicorn(env_file_values(), workers=1)
    yield g
    log = g.stop()
    assert "Traceback" not in log, log


@pytest.fixture(scope="module")
def backend_proxy(backend) -> Iterator[Gunicorn]:
    g = Gunicorn(env_file_values(BACKEND_URL=backend.root), workers=1)
    yield g
    log = g.stop()
    assert "Traceback" not in log, log


def requests_in_collection(excluded_tag: str) -> set[str]:
    """Every request file (`type: http`) not tagged `excluded_tag`, as Bruno names it (folder/file.bru)."""
    out = set()
    for path in COLLECTION.rglob("*.bru"):
        text = path.read_text()
        if "type: http" not in text:
            continue
        tags = re.search(r"tags: \[([^\]]*)\]", text)
        if tags and excluded_tag in tags.group(1).split():
            continue
        out.add(str(path.relative_to(COLLECTION)))
    return out


def run_collection(bru: Path, base_url: str, excluded_tag: str, tmp_path: Path) -> list[dict]:
    """`bru run -r --env local` in a copy of the collection, as a user runs it; the results per request."""
    copy = tmp_path / "bruno"
    shutil.copytree(COLLECTION, copy)
    report = tmp_path / "results.json"
    done = subprocess.run(
        [
            str(bru),
            "run",
            "-r",
            "--env",
            "local",
            "--env-var",
            f"base_url={base_url}",
            f"--exclude-tags={excluded_tag}",
            "--reporter-json",
            str(report),
        ],
        cwd=copy,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    (iteration,) = json.loads(report.read_text())
    summary = iteration["summary"]
    assert summary["failedRequests"] == summary["errorRequests"] == 0, done.stdout[-6000:]
    assert summary["failedTests"] == summary["failedAssertions"] == 0, done.stdout[-6000:]
    return iteration["results"]


def ran(results: list[dict]) -> set[str]:
    return {r["test"]["filename"] for r in results}


def test_local_environment_is_the_default_listen_address():
    assert "base_url: http://localhost:5000" in (COLLECTION / "environments" / "local.bru").read_text()
    assert sorted(p.name for p in COLLECTION.iterdir() if p.is_dir()) == [
        "GET endpoints",
        "POST endpoints",
        "environments",
    ]


def test_checks_are_tests_blocks():
    """Bruno CLI 4.1's `assert {}` blocks are evaluated in a QuickJS sandbox loaded asynchronously, so the
    first ones of a run can see `res.status` as undefined under load; `tests {}` blocks wait for it."""
    for path in COLLECTION.rglob("*.bru"):
        text = path.read_text()
        assert "\nassert {" not in text, path
        assert "type: http" not in text or "\ntests {" in text, f"{path}: checks nothing"


def test_collection_in_echo_mode(bru, echo_proxy, tmp_path):
    results = run_collection(bru, echo_proxy.url, "backend", tmp_path)
    assert ran(results) == requests_in_collection("backend")
    assert all(r["status"] == "pass" for r in results)


def test_collection_in_front_of_a_backend(bru, backend_proxy, backend, tmp_path):
    backend.reset()
    results = run_collection(bru, backend_proxy.url, "echo", tmp_path)
    assert ran(results) == requests_in_collection("echo")
    assert "POST endpoints/backend success.bru" in ran(results)
    # Every chat the proxy accepted was relayed, not answered locally; the 400s never left it.
    accepted = [
        r for r in results if r["request"]["url"].endswith("/v1/chat/completions") and r["response"]["status"] == 200
    ]
    relayed = [r for r in backend.requests if r.path == "/v1/chat/completions"]
    assert accepted and len(relayed) == len(accepted)
    assert "gpt-4o-mini" in {r.json().get("model") for r in relayed}

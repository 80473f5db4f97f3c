"""The LLM gateway's workflow: `make build`, `make run` (config.yaml via COT_PROXY_CONFIG), the example
request scripts against the running proxy, `make test`, `make clean`. The virtualenv `make build` makes
lives in a temporary folder and sees this interpreter's packages (--system-site-packages), so the
install step is the real one without downloading anything."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.fakes.openai_upstream import FakeUpstream
from tests.support import ISOLATED, ROOT, free_port, sse_data

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def make_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (*ISOLATED, "VIRTUAL_ENV", "MAKEFLAGS", "MFLAGS")}
    env.update(extra)
    return env


def make(
    *args: str, cwd: Path = ROOT, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", *args], cwd=cwd, env=env or make_env(), capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> list[str]:
    """`make build` into a fresh virtualenv; the make variables that point the other targets at it."""
    where = tmp_path_factory.mktemp("make") / "venv"
    flags = [f"VENV={where}", "VENV_FLAGS=--system-site-packages --without-pip", f"PYTHON={sys.executable}"]
    built = make("build", *flags)
    assert built.returncode == 0, built.stdout + built.stderr
    assert (where / ".cot-proxy-requirements").is_file() and (where / ".cot-proxy-made").is_file()
    assert "Build complete" in built.stdout
    again = make("build", *flags)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout  # up to date: nothing reinstalled
    return flags


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


class MakeRun:
    """`make run` in its own process group (make, then Gunicorn under it), stopped as a group."""

    def __init__(self, flags: list[str], config: Path) -> None:
        self.port = free_port()
        self.log = config.with_suffix(".log")
        self._out = open(self.log, "wb")  # noqa: SIM115 - closed in stop()
        env = make_env(HOST="127.0.0.1", PORT=str(self.port), WEB_CONCURRENCY="1")
        self.proc = subprocess.Popen(
            ["make", "run", *flags, f"CONFIG={config}"],
            cwd=ROOT,
            env=env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise AssertionError("make run exited: " + self.log.read_text(errors="replace"))
            try:
                if requests.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError("make run did not answer within 60 s: " + self.log.read_text(errors="replace"))
            time.sleep(0.1)  # polling for start-up, bounded by the deadline

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> str:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._out.close()
        return self.log.read_text(errors="replace")


def script(name: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(ROOT / "examples" / name), *args], env=make_env(**env), capture_output=True, text=True, timeout=30
    )


def test_make_run_with_config_yaml_and_the_example_scripts(venv, upstream, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(f"""
providers:
  local: {{type: openai, base_url: "{upstream.base_url}"}}
models:
  fast: {{route: [local/fake-model]}}
default_provider: local
""")
    run = MakeRun(venv, config)
    try:
        assert run.proc.poll() is None
        chat = script("chat.sh", "Hello, gateway", BASE_URL=run.url, MODEL="local/fake-model")
        assert chat.returncode == 0, chat.stderr
        assert '"Hello from upstream"' in chat.stdout
        sent = upstream.last
        assert sent.path == "/v1/chat/completions" and sent.json()["model"] == "fake-model"  # provider/ removed
        assert sent.json()["messages"] == [{"role": "user", "content": "Hello, gateway"}]

        stream = script("stream.sh", BASE_URL=run.url + "/", MODEL="fast")  # an alias from config.yaml
        assert stream.returncode == 0, stream.stderr
        events = sse_data(stream.stdout.encode())
        assert events[-1] == "[DONE]" and any("upstream" in e for e in events)
        assert upstream.last.json()["stream"] is True and upstream.last.json()["model"] == "fake-model"

        models = requests.get(run.url + "/v1/models", timeout=10).json()
        assert "fast" in [m["id"] for m in models["data"]]

        failed = script("chat.sh", BASE_URL=run.url, MODEL="nowhere/model")  # unknown provider: 404
        assert failed.returncode != 0 and "model_not_found" in failed.stdout
    finally:
        log = run.stop()
    assert "COT_PROXY_CONFIG=" + str(config) in log and "Traceback" not in log, log


def test_make_run_without_config_says_what_to_do(venv, tmp_path):
    missing = make("run", *venv, f"CONFIG={tmp_path / 'config.yaml'}")
    assert missing.returncode != 0
    assert "cp config.example.yaml config.yaml" in missing.stderr


def test_make_test(venv):
    ran = make("test", *venv, "PYTEST_ARGS=-q tests/unit/test_config.py", timeout=300)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert " passed" in ran.stdout


def test_make_clean(tmp_path):
    tree = tmp_path / "tree"
    for d in (
        "app/__pycache__",
        "tests/unit/__pycache__",
        ".pytest_cache",
        ".ruff_cache",
        ".cache/bruno-cli",
        "data",
        ".venv/lib/site/__pycache__",
    ):
        (tree / d).mkdir(parents=True)
    shutil.copy(ROOT / "Makefile", tree / "Makefile")
    (tree / "app/__pycache__/x.pyc").write_bytes(b"")
    (tree / "data/cot-proxy.db").write_bytes(b"keys")
    (tree / ".venv/.cot-proxy-made").write_text("")
    cleaned = make("clean", cwd=tree)
    assert cleaned.returncode == 0, cleaned.stderr
    left = sorted(str(p.relative_to(tree)) for p in tree.rglob("*"))
    assert left == ["Makefile", "app", "data", "data/cot-proxy.db", "tests", "tests/unit"]

    # A virtualenv make did not create (someone's own) is kept; only make's stamps go.
    (tree / "own/bin").mkdir(parents=True)
    (tree / "own/.cot-proxy-requirements").write_text("")
    cleaned = make("clean", "VENV=own", cwd=tree)
    assert cleaned.returncode == 0 and (tree / "own/bin").is_dir()
    assert not (tree / "own/.cot-proxy-requirements").exists()

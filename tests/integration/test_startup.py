"""Starting the proxy as the README and the Dockerfile do: pinned requirements, the one
listen-address rule (Gunicorn's bind, Config, the Docker HEALTHCHECK), worker classes
refused in one line, and an access log without query strings or credentials."""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from app.config import Config, ConfigError
from app.listen import ListenAddressError, bind, listen_address, probe_url
from tests.support import ISOLATED, ROOT, Gunicorn, failed_start, free_port, worker_pids

README_COMMAND = ["gunicorn", "-c", "gunicorn.conf.py", "cot_proxy:app"]
LISTEN_VARS = ("HOST", "PORT", "GATEWAY_HOST", "GATEWAY_PORT", "PROXY_ADDR")


# -- requirements ---------------------------------------------------------------------------------------


def _requirements(name: str) -> tuple[list[str], list[Requirement]]:
    """(option lines such as `-c constraints.txt`, requirements) of one requirements file."""
    options, reqs = [], []
    for raw in (ROOT / name).read_text().splitlines():
        line = raw.split(" #")[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-"):
            options.append(line)
        else:
            reqs.append(Requirement(line))
    return options, reqs


def _pins() -> dict[str, Version]:
    """constraints.txt's exact pins for this Python (lines whose marker does not apply are skipped)."""
    pins = {}
    for raw in (ROOT / "constraints.txt").read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            req = Requirement(line)
            specs = list(req.specifier)
            assert not req.extras and len(specs) == 1 and specs[0].operator == "==", f"not an exact pin: {line!r}"
            if req.marker is None or req.marker.evaluate():
                name = canonicalize_name(req.name)
                assert name not in pins, f"constraints.txt pins {req.name} twice for this Python"
                pins[name] = Version(specs[0].version)
    return pins


@pytest.mark.parametrize("name", ["requirements.txt", "requirements-dev.txt"])
def test_every_requirement_has_a_major_bound_and_a_pin_inside_it(name):
    options, reqs = _requirements(name)
    assert "-c constraints.txt" in options, f"{name} does not read constraints.txt"
    pins = _pins()
    for req in reqs:
        uppers = [s for s in req.specifier if s.operator in ("<", "<=", "~=", "==")]
        assert uppers, f"{name}: {req} has no upper bound"
        pinned = pins.get(canonicalize_name(req.name))
        assert pinned is not None, f"{name}: {req.name} is not pinned in constraints.txt"
        assert req.specifier.contains(pinned, prereleases=True), f"constraints.txt pins {req.name}=={pinned}: {req}"


def test_gunicorn_comes_with_its_gevent_extra_and_schemathesis_is_a_dev_tool():
    runtime = {canonicalize_name(r.name): r for r in _requirements("requirements.txt")[1]}
    dev = {canonicalize_name(r.name): r for r in _requirements("requirements-dev.txt")[1]}
    # Gunicorn 27's gevent worker imports `packaging`, which only the extra brings.
    assert "gevent" in runtime["gunicorn"].extras
    assert str(dev["schemathesis"].specifier) in ("<5,>=4", ">=4,<5")
    assert "packaging" in _pins()  # what the extra brought is pinned too


# -- the listen address ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, ("0.0.0.0", 5000)),
        ({"PROXY_ADDR": ":8090"}, ("0.0.0.0", 8090)),
        ({"HOST": "127.0.0.1", "PROXY_ADDR": ":8090"}, ("127.0.0.1", 8090)),
        ({"PORT": "7000", "PROXY_ADDR": "10.1.2.3:8090"}, ("10.1.2.3", 7000)),
        ({"PROXY_ADDR": "[::1]:8090"}, ("::1", 8090)),
        ({"GATEWAY_HOST": "127.0.0.2", "GATEWAY_PORT": "9000", "PROXY_ADDR": "h:1"}, ("127.0.0.2", 9000)),
        ({"HOST": "h1", "GATEWAY_HOST": "h2", "PORT": "1", "GATEWAY_PORT": "2"}, ("h1", 1)),
        ({"HOST": " ", "PORT": "", "PROXY_ADDR": " 127.0.0.1:8091 "}, ("127.0.0.1", 8091)),
        ({"HOST": "[::]"}, ("::", 5000)),
    ],
)
def test_one_rule_for_host_and_port(env, expected):
    assert listen_address(env) == expected
    config = Config.from_env(env)
    assert (config.host, config.port) == expected


def test_bind_and_probe_urls():
    assert bind({"PROXY_ADDR": "[::1]:8090"}) == "[::1]:8090"
    assert bind({"HOST": "127.0.0.1", "PROXY_ADDR": ":8090"}) == "127.0.0.1:8090"
    assert probe_url({"PROXY_ADDR": ":8090"}) == "http://127.0.0.1:8090/healthz"
    assert probe_url({"HOST": "::"}) == "http://[::1]:5000/healthz"
    assert probe_url({"HOST": "10.0.0.5", "PORT": "81"}) == "http://10.0.0.5:81/healthz"


@pytest.mark.parametrize(
    "env, name",
    [
        ({"PROXY_ADDR": "8090"}, "PROXY_ADDR"),
        ({"PROXY_ADDR": "h:"}, "PROXY_ADDR"),
        ({"PROXY_ADDR": "::1:8090"}, "PROXY_ADDR"),
        ({"PROXY_ADDR": ":0"}, "PROXY_ADDR"),
        ({"PORT": "http"}, "PORT"),
        ({"GATEWAY_PORT": "70000"}, "GATEWAY_PORT"),
    ],
)
def test_bad_listen_values_name_the_variable(env, name):
    for call in (listen_address, Config.from_env):
        with pytest.raises((ListenAddressError, ConfigError)) as info:
            call(env)
        assert str(info.value).startswith(name + "=") and "\n" not in str(info.value)


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ISOLATED and k not in LISTEN_VARS}
    env.update({"WEB_CONCURRENCY": "1", **extra})
    return env


def _wait_for(predicate, what: str, timeout: float = 60.0, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.05)  # polling a process's start-up, bounded by `timeout`
    raise AssertionError(f"{what} within {timeout:.0f} s" + (f":\n{log.read_text(errors='replace')}" if log else ""))


@contextmanager
def _gunicorn(env: dict[str, str]) -> Iterator[tuple[subprocess.Popen, Path]]:
    """README command 1 with exactly `env` (no helper-chosen HOST/PORT)."""
    log = Path(tempfile.mkstemp(prefix="cot-proxy-startup-", suffix=".log")[1])
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", *README_COMMAND], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        )
        try:
            yield proc, log
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _listening_at(proc: subprocess.Popen, log: Path) -> str | None:
    match = re.search(r"Listening at: (\S+)", log.read_text(errors="replace"))
    if match is None and proc.poll() is not None:
        raise AssertionError("gunicorn exited:\n" + log.read_text(errors="replace"))
    return match.group(1) if match else None


def _healthz(url: str) -> bool:
    try:
        return requests.get(url + "/healthz", timeout=5).status_code == 200
    except (requests.ConnectionError, requests.Timeout):
        return False


def _healthcheck_command() -> list[str]:
    """The Dockerfile's HEALTHCHECK CMD (exec form), with this interpreter for `python`."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    match = re.search(r"^HEALTHCHECK\b.*?\bCMD\s+(\[.*\])\s*$", text, re.M)
    assert match, "Dockerfile: no exec-form HEALTHCHECK CMD"
    argv = json.loads(match.group(1))
    assert argv[0] == "python"
    if sys.version_info < (3, 11):  # the image has 3.11; -P (no script folder on sys.path) is new there
        argv = [a for a in argv if a != "-P"]
    return [sys.executable, *argv[1:]]


def test_proxy_addr_port_is_where_gunicorn_config_and_healthcheck_look():
    port = free_port()
    env = _clean_env(HOST="127.0.0.1", PROXY_ADDR=f":{port}")
    assert Config.from_env(env).port == port
    with _gunicorn(env) as (proc, log):
        address = _wait_for(lambda: _listening_at(proc, log), "no 'Listening at' line", log=log)
        assert address == f"http://127.0.0.1:{port}"
        _wait_for(lambda: _healthz(address), "no answer on the PROXY_ADDR port", log=log)
        check = subprocess.run(_healthcheck_command(), cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stderr
    # Nothing listens there any more: the same HEALTHCHECK fails.
    check = subprocess.run(_healthcheck_command(), cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert check.returncode != 0


def test_dockerfile_installs_the_pinned_set_and_runs_the_readme_command():
    text = (ROOT / "Dockerfile").read_text()
    copy = re.search(r"^COPY (.*)$", text, re.M)
    assert copy and "requirements.txt" in copy.group(1) and "constraints.txt" in copy.group(1)
    assert re.search(r"^RUN pip install .*-r requirements\.txt", text, re.M)
    cmd = re.search(r"^CMD (\[.*\])\s*$", text, re.M)
    assert cmd and json.loads(cmd.group(1)) == README_COMMAND


def test_dockerfile_writes_the_bytecode_the_workers_would_otherwise_compile_at_each_boot(tmp_path):
    """The image sets PYTHONDONTWRITEBYTECODE: without bytecode from the build every worker compiles app/."""
    text = (ROOT / "Dockerfile").read_text()
    assert "PYTHONDONTWRITEBYTECODE=1" in text
    run = re.search(r"^RUN (python -m compileall .*)$", text, re.M)
    assert run and text.index(run.group(0)) > text.index("COPY app/ app/")
    shutil.copytree(ROOT / "app", tmp_path / "app", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("cot_proxy.py", "gunicorn.conf.py"):
        shutil.copy(ROOT / name, tmp_path / name)
    argv = run.group(1).split()
    subprocess.run([sys.executable, *argv[1:]], cwd=tmp_path, check=True, timeout=120)
    sources = sorted(tmp_path.glob("app/**/*.py"))
    assert sources and all(Path(importlib.util.cache_from_source(str(src))).exists() for src in sources)
    # A checkout's own bytecode (another Python's, or stale) stays out of the image: Docker's patterns
    # match from the context's root, so only `**/` reaches app/__pycache__.
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert "**/__pycache__" in ignored and "**/*.pyc" in ignored


# -- Gunicorn's own settings -------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["uvicorn", "uvicorn.workers.UvicornWorker", "eventlet", "gevent2"])
def test_unknown_worker_class_is_refused_in_one_line(value):
    code, out = failed_start({"GUNICORN_WORKER_CLASS": value})
    assert code != 0
    assert out.strip() == (
        f"cot-proxy: configuration error: GUNICORN_WORKER_CLASS={value!r}: use gevent (the default), gthread or sync"
    )


def test_worker_class_by_its_full_path():
    g = Gunicorn({"GUNICORN_WORKER_CLASS": "gunicorn.workers.gthread.ThreadWorker", "GUNICORN_THREADS": "4"}, workers=1)
    try:
        assert requests.get(g.url + "/v1/models", timeout=10).status_code == 200
    finally:
        out = g.stop()
    assert "Using worker: gthread" in out


@pytest.mark.parametrize("value", ["sync", "gunicorn.workers.sync.SyncWorker"])
def test_sync_is_the_sync_worker_not_gthread(value):
    """Gunicorn runs a sync worker with threads > 1 as gthread: the thread default applies to gthread only."""
    g = Gunicorn({"GUNICORN_WORKER_CLASS": value}, workers=1)
    try:
        assert requests.get(g.url + "/v1/models", timeout=10).status_code == 200
    finally:
        out = g.stop()
    assert "Using worker: sync" in out


def _maps_gevent(pid: int) -> bool:
    return "/gevent/" in Path(f"/proc/{pid}/maps").read_text()


def test_gevent_is_loaded_in_the_workers_only():
    """The master supervises; gevent's extension modules (about 5.7 MiB) are mapped in the workers alone,
    which still run Gunicorn's own gevent worker (a stream survives the keep-alive timeout)."""
    g = Gunicorn({"GUNICORN_KEEPALIVE": "1"}, workers=2)
    try:
        workers = worker_pids(g)
        assert len(workers) == 2 and all(_maps_gevent(w) for w in workers)
        assert not _maps_gevent(g.proc.pid)
        body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        with requests.post(g.url + "/v1/chat/completions", json=body, stream=True, timeout=10) as r:
            assert r.status_code == 200 and b"data: [DONE]" in r.content
    finally:
        out = g.stop()
    assert "Using worker: app.gevent_worker.GeventWorker" in out
    assert "Traceback" not in out


def test_a_reload_brings_new_gevent_workers_and_the_master_stays_without_gevent():
    """SIGHUP: Gunicorn builds new workers from the reloaded settings; each becomes a gevent worker again."""
    g = Gunicorn({}, workers=2)
    try:
        before = set(worker_pids(g))
        g.proc.send_signal(signal.SIGHUP)
        after = _wait_for(
            lambda: (now := set(worker_pids(g))) and len(now) == 2 and not now & before and now, "two new workers"
        )
        _wait_for(lambda: all(_maps_gevent(w) for w in after), "gevent in the new workers")
        assert not _maps_gevent(g.proc.pid)
        for _ in range(4):
            assert requests.get(g.url + "/v1/models", timeout=10).status_code == 200
    finally:
        out = g.stop()
    assert "Traceback" not in out


def test_access_log_has_no_query_string_or_credentials():
    g = Gunicorn({"GUNICORN_ACCESS_LOG": "-"}, workers=1)
    basic = base64.b64encode(b"alice:sk-basic-pass-5566").decode()
    try:
        r = requests.get(
            g.url + "/v1/models?api_key=sk-secret123&x=1",
            timeout=10,
            headers={"Authorization": f"Basic {basic}", "Referer": "https://example.test/page?token=sk-referer-7788"},
        )
        assert r.status_code == 200
        line = _wait_for(
            lambda: next(
                (
                    x["message"]
                    for x in g.lines()
                    if x.get("logger") == "gunicorn.access" and "/v1/models" in x["message"]
                ),
                None,
            ),
            "no access log line",
            timeout=20,
            log=g.log_path,
        )
    finally:
        out = g.stop()
    assert '"GET /v1/models HTTP/1.1" 200' in line
    for secret in ("sk-secret123", "api_key", "x=1", "alice", "sk-basic-pass", basic, "sk-referer", "example.test"):
        assert secret not in out

"""External tools the seed tests run (docker-compose, shellcheck, npm): found, or installed the way the
seed's users would get them, or the test is skipped saying why (never under CI=true: there it fails)."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any

import pytest
import requests

IN_CI = os.environ.get("CI", "").lower() == "true"


def unavailable(reason: str) -> None:
    """Skip (with `reason` in the summary), or fail under CI=true."""
    if IN_CI:
        pytest.fail(f"CI=true: {reason}")
    pytest.skip(reason)


def _apt_install(package: str) -> None:
    """Debian's package, when this is a Debian-like box we may change: under CI=true and as root only."""
    if not (IN_CI and shutil.which("apt-get") and os.geteuid() == 0):
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for args in (
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", package],
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", package],
    ):
        try:
            done = subprocess.run(args, env=env, capture_output=True, timeout=600)
        except subprocess.TimeoutExpired:
            return
        if args[1] == "install" and done.returncode == 0:
            return


def command(name: str, apt_package: str) -> str:
    """The path of `name`; installs `apt_package` under CI when it is missing; else skips saying how."""
    found = shutil.which(name)
    if found is None:
        _apt_install(apt_package)
        found = shutil.which(name)
    if found is None:
        unavailable(f"{name} is not installed (apt-get install -y {apt_package})")
    return found


def compose() -> list[str]:
    """`docker-compose` (Debian's package), else the `docker compose` plugin."""
    found = shutil.which("docker-compose")
    if found is None and shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if found is None:
        _apt_install("docker-compose")
        found = shutil.which("docker-compose")
    if found is None:
        unavailable(
            "neither docker-compose nor the docker compose plugin is installed (apt-get install -y docker-compose)"
        )
    return [found]


def http(method: str, url: str, **kw: Any) -> requests.Response:
    """One request on its own connection, closed when it returns (`Connection: close`): a proxy stopped
    right after it has no idle keep-alive connection to wait out (Gunicorn's keepalive, 5 s)."""
    kw.setdefault("timeout", 10)
    kw["headers"] = {"Connection": "close", **kw.get("headers", {})}
    with requests.request(method, url, **kw) as resp:
        resp.content  # noqa: B018 - read it all before the connection closes
        return resp

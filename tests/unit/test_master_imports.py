"""gunicorn.conf.py runs in the master before gevent patches the workers: it must not load
anything that opens sockets through TLS or HTTP clients (they would keep blocking versions)."""

from __future__ import annotations

import subprocess
import sys

from tests.support import ROOT

CHECK = """
import runpy, sys
conf = runpy.run_path("gunicorn.conf.py")
print(conf["bind"])
print(",".join(m for m in ("ssl", "requests", "urllib3", "flask", "werkzeug", "gevent", "app.relay")
               if m in sys.modules))
"""


def run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CHECK],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_master_loads_config_without_flask_requests_or_ssl():
    out = run({"HOST": "127.0.0.1", "PORT": "8123", "TARGET_BASE_URL": "https://example.invalid/v1"})
    assert out.returncode == 0, out.stderr
    bind, loaded = out.stdout.splitlines()
    assert bind == "127.0.0.1:8123"  # Config's host and port: app/listen.py's rule
    assert loaded == ""


def test_a_bad_setting_stops_the_master_with_one_line():
    out = run({"PORT": "http"})
    assert out.returncode != 0
    assert "cot-proxy: configuration error: PORT='http'" in out.stderr

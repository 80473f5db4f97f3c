"""Every module of the app imports on its own, first (no import cycle that only the order
inside create_app hides), and importing the package itself loads nothing else."""

from __future__ import annotations

import subprocess
import sys

from tests.support import ROOT

CHECK = """
import importlib, pkgutil, sys
import app
assert [m for m in sys.modules if m.startswith("app.")] == [], "import app loaded submodules"
names = [m.name for m in pkgutil.walk_packages(app.__path__, "app.")]
failed = []
from prometheus_client import REGISTRY  # app/observability/metrics.py registers its metrics once
for name in names:
    for loaded in [m for m in sys.modules if m.startswith("app.")]:
        del sys.modules[loaded]
    for collector in list(REGISTRY._collector_to_names):
        REGISTRY.unregister(collector)
    try:
        importlib.import_module(name)
    except Exception as exc:
        failed.append(f"{name}: {type(exc).__name__}: {exc}")
print(len(names))
print("\\n".join(failed))
"""


def test_each_module_imports_first():
    out = subprocess.run([sys.executable, "-c", CHECK], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    count, *failed = out.stdout.splitlines()
    assert int(count) > 50
    assert [f for f in failed if f] == []

""".env.example, the one file cot_proxy's and the inference gateway's users copy to .env: it names every
variable the code reads, each with its default, and copying it unchanged changes nothing (the app's
Config and Gunicorn's settings are the same with it as without it). cot_proxy's LLM_PARAMS examples,
`append_to_last_user_message=\\n\\n/no_think` included, parse to what they mean once uncommented."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from dotenv import dotenv_values

from app.config import Config
from app.model_params import parse_llm_params
from tests.support import ISOLATED, ROOT

ENV_EXAMPLE = ROOT / ".env.example"
COMPOSE_ONLY = {"HOST_PORT"}
"""Read by docker-compose.yml, not by the proxy."""
NOT_SETTINGS = {"SERVER_SOFTWARE"}
"""Set by Gunicorn itself, never by a user."""
ASSIGNMENT = re.compile(r"^([A-Z][A-Z0-9_]*)=(.*)$")
# A call whose first argument is the environment and whose second is a literal name: envparse's helpers,
# local ones (`_pattern(env, "X", ...)`), `os.environ.get("X")`, `env.get("X")`; and alias tuples.
_CALL = re.compile(r"\(\s*(?:env|os\.environ|self\.env)\s*,\s*\"([A-Z][A-Z0-9_]+)\"")
_GET = re.compile(r"(?:os\.environ|\benv)\.get\(\s*\"([A-Z][A-Z0-9_]+)\"")
_GUNICORN = re.compile(r"_(?:env|int)\(\s*\"([A-Z][A-Z0-9_]+)\"")
_ALIASES = re.compile(r"aliases=\(([^)]*)\)")
_QUOTED = re.compile(r"\"([A-Z][A-Z0-9_]+)\"")


class Recording(dict):
    """An environment that remembers every name looked up in it."""

    def __init__(self, values: Mapping[str, str]) -> None:
        super().__init__(values)
        self.seen: set[str] = set()

    def get(self, key, default=None):
        self.seen.add(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self.seen.add(key)
        return super().__getitem__(key)

    def __contains__(self, key) -> bool:
        self.seen.add(key)
        return super().__contains__(key)


def sources() -> Iterator[Path]:
    yield ROOT / "gunicorn.conf.py"
    yield ROOT / "cot_proxy.py"
    yield from sorted((ROOT / "app").rglob("*.py"))


def read_by_code() -> set[str]:
    """Every variable the proxy reads: what Config.from_env looks up (every settings module, listen.py,
    the Livepeer routes when GATEWAY_URL is set), plus literal reads anywhere in app/ and gunicorn.conf.py."""
    names: set[str] = set()
    for env in ({}, {"GATEWAY_URL": "http://gateway:9935"}, {"MAX_CONCURRENT_REQUESTS": "2"}):
        rec = Recording(env)
        Config.from_env(rec)
        names |= rec.seen
    for path in sources():
        source = path.read_text()
        names |= set(_CALL.findall(source)) | set(_GET.findall(source))
        if path.name == "gunicorn.conf.py":
            names |= set(_GUNICORN.findall(source))
        for group in _ALIASES.findall(source):
            names |= set(_QUOTED.findall(group))
    names |= {"PROMETHEUS_MULTIPROC_DIR"}  # gunicorn_hooks.MULTIPROC_VAR, read through the constant
    return {n for n in names if n.isupper()} - NOT_SETTINGS


def assignments() -> list[tuple[int, str, str]]:
    """(line number, name, value) of every active line."""
    out = []
    for number, line in enumerate(ENV_EXAMPLE.read_text().splitlines(), 1):
        m = ASSIGNMENT.match(line)
        if m:
            out.append((number, m.group(1), m.group(2)))
    return out


def example_values() -> dict[str, str]:
    return {k: v or "" for k, v in dotenv_values(ENV_EXAMPLE).items()}


def test_names_every_variable_the_code_reads_and_no_other():
    named = [name for _, name, _ in assignments()]
    assert len(named) == len(set(named)), "named twice: " + ", ".join(sorted({n for n in named if named.count(n) > 1}))
    read = read_by_code()
    missing = sorted(read - set(named))
    assert not missing, f"read by the code but not in .env.example (add each with its default): {missing}"
    unknown = sorted(set(named) - read - COMPOSE_ONLY)
    assert not unknown, f"in .env.example but read by nothing: {unknown}"


def test_every_line_parses_as_written_by_both_readers():
    """python-dotenv (the proxy) and docker-compose's env_file keep values verbatim: no quotes, no
    inline comments, no `$` to expand."""
    values = example_values()
    for number, name, value in assignments():
        assert values[name] == value, f"line {number}: {name}"
        assert not value.startswith(("'", '"')) and " #" not in value and "$" not in value, f"line {number}"


def test_each_empty_line_says_its_default():
    """`NAME=` lines (unset) sit under a comment that gives the default that then applies."""
    lines = ENV_EXAMPLE.read_text().splitlines()
    for number, name, value in assignments():
        if value:
            continue
        i = number - 2
        while i >= 0 and ASSIGNMENT.match(lines[i]):  # a run of assignments shares the comment above it
            i -= 1
        comment = []
        while i >= 0 and lines[i].startswith("#"):
            comment.append(lines[i])
            i -= 1
        assert comment and "default" in " ".join(comment).lower(), f"line {number}: {name}= has no default above"


def test_copying_it_changes_nothing_in_the_app():
    assert Config.from_env(example_values()) == Config.from_env({})
    assert Config.from_env(example_values()).echo_mode


GUNICORN_SETTINGS = [
    "bind",
    "workers",
    "worker_class",
    "worker_connections",
    "threads",
    "timeout",
    "graceful_timeout",
    "keepalive",
    "backlog",
    "accesslog",
    "loglevel",
]
READ_GUNICORN = f"""
import json, runpy
ns = runpy.run_path("gunicorn.conf.py")
print(json.dumps({{k: ns[k] for k in {GUNICORN_SETTINGS!r}}}))
"""


def gunicorn_settings(extra: dict[str, str]) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ISOLATED and k not in example_values()}
    env.update(extra)
    proc = subprocess.run(
        [sys.executable, "-c", READ_GUNICORN], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_copying_it_changes_nothing_in_gunicorn():
    assert gunicorn_settings(example_values()) == gunicorn_settings({})


def commented_examples(name: str) -> list[str]:
    return [line[2:] for line in ENV_EXAMPLE.read_text().splitlines() if line.startswith(f"# {name}=")]


def uncommented(tmp_path: Path, line: str) -> dict[str, str]:
    """What the proxy reads after a user uncomments `line` in their .env."""
    env_file = tmp_path / ".env"
    env_file.write_text(line + "\n")
    return {k: v or "" for k, v in dotenv_values(env_file).items()}


def test_cot_proxy_no_think_example(tmp_path):
    (line,) = [x for x in commented_examples("LLM_PARAMS") if "/no_think" in x]
    values = uncommented(tmp_path, line)
    assert "append_to_last_user_message=\\n\\n/no_think" in values["LLM_PARAMS"]  # two characters, as written
    group = parse_llm_params(values["LLM_PARAMS"]).lookup("Qwen3-32B-Non-Thinking", fallback=False)
    assert group is not None and group.upstream_model == "Qwen3-32B"
    assert group.append_text == "\n\n/no_think"  # ... which the grammar reads as newlines
    assert group.think_mode == "strip" and group.overrides == {"temperature": 0.7, "top_k": 20, "top_p": 0.8}


def test_an_example_uncommented_in_place_wins(tmp_path):
    """What a user does: remove the `# ` in front of an example, leaving the rest of the file as it is."""
    for example in commented_examples("LLM_PARAMS"):
        text = ENV_EXAMPLE.read_text().replace("# " + example + "\n", example + "\n", 1)
        env_file = tmp_path / ".env"
        env_file.write_text(text)
        assert dotenv_values(env_file)["LLM_PARAMS"] == example.split("=", 1)[1]


@pytest.mark.parametrize("line", commented_examples("LLM_PARAMS") + commented_examples("TARGET_BASE_URL"))
def test_every_commented_example_starts(tmp_path, line):
    Config.from_env(uncommented(tmp_path, line))

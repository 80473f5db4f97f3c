"""docker-compose.yml as cot_proxy's users run it: `cp .env.example .env`, set TARGET_BASE_URL to their
model server's root and uncomment the /no_think LLM_PARAMS line, `docker-compose up`. There is no Docker
engine here, so `docker-compose config` validates the file and resolves the container's environment
(env_file .env plus environment), and the proxy is started under Gunicorn with exactly that environment;
the health check's own command is run against it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

from tests.fakes.openai_upstream import chat_completion, json_reply
from tests.seeds import tools
from tests.support import ROOT, Gunicorn

NO_THINK_MODEL = "Qwen3-32B-Non-Thinking"


def project(tmp_path: Path, target: str | None = None) -> Path:
    """A copy of the compose file with the .env a cot_proxy user makes from .env.example."""
    where = tmp_path / "cot-proxy"
    where.mkdir()
    shutil.copy(ROOT / "docker-compose.yml", where / "docker-compose.yml")
    shutil.copy(ROOT / "Dockerfile", where / "Dockerfile")
    lines = []
    for line in (ROOT / ".env.example").read_text().splitlines():
        if target is not None and line == "TARGET_BASE_URL=":
            line = f"TARGET_BASE_URL={target}"  # edited in place
        elif target is not None and line.startswith("# LLM_PARAMS=") and "/no_think" in line:
            line = line[2:]  # uncommented in place
        lines.append(line)
    (where / ".env").write_text("\n".join(lines) + "\n")
    return where


def config(where: Path, **env: str) -> dict:
    compose = tools.compose()
    full = {k: v for k, v in os.environ.items() if k not in ("HOST_PORT", "COMPOSE_FILE", "COMPOSE_PROJECT_NAME")}
    full.update(env)
    done = subprocess.run([*compose, "config"], cwd=where, env=full, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


def ports(service: dict) -> list[tuple[str, str]]:
    out = []
    for p in service["ports"]:
        if isinstance(p, dict):
            out.append((str(p["published"]), str(p["target"])))
        else:
            host, _, container = str(p).rpartition(":")
            out.append((host.rsplit(":", 1)[-1], container.split("/")[0]))
    return out


def test_compose_file_as_cot_proxy_has_it(tmp_path):
    service = config(project(tmp_path))["services"]["cot-proxy"]
    assert ports(service) == [("3000", "5000")]  # ${HOST_PORT:-3000}:5000
    health = service["healthcheck"]
    assert (health["interval"], health["timeout"], health["retries"]) == ("30s", "10s", 3)
    assert health["test"][0] == "CMD" and "http://127.0.0.1:5000/health" in " ".join(health["test"])
    assert service["environment"]["PORT"] == "5000" and service["environment"]["TARGET_BASE_URL"] == ""
    assert service["image"] == "cot-proxy:latest"  # what ./build.sh tags by default


def test_host_port_moves_the_host_side_only(tmp_path):
    where = project(tmp_path)
    assert ports(config(where, HOST_PORT="8080")["services"]["cot-proxy"]) == [("8080", "5000")]
    with open(where / ".env", "a") as fh:  # HOST_PORT set in .env, as cot_proxy's .env.example has it
        fh.write("HOST_PORT=8181\n")
    assert ports(config(where)["services"]["cot-proxy"]) == [("8181", "5000")]


class _Status503(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = b'{"status": "unhealthy"}'
        self.send_response(503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def healthcheck(service: dict, port: int) -> int:
    """The compose health check's command, run here against `port` instead of the container's 5000."""
    test = service["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    code = test[3].replace("127.0.0.1:5000", f"127.0.0.1:{port}")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30).returncode


def test_container_environment_runs_the_proxy(tmp_path, module_upstream):
    """The environment compose resolves, edited as a cot_proxy user does, under real Gunicorn."""
    module_upstream.reset()
    service = config(project(tmp_path, target=module_upstream.root + "/"))["services"]["cot-proxy"]
    env = {k: "" if v is None else str(v) for k, v in service["environment"].items()}
    assert env["TARGET_BASE_URL"] == module_upstream.root + "/"
    assert "append_to_last_user_message=\\n\\n/no_think" in env["LLM_PARAMS"]  # kept verbatim by env_file
    for name in ("HOST", "PORT", "WEB_CONCURRENCY"):  # the harness picks a free port and one worker
        env.pop(name)
    g = Gunicorn(env, workers=1)
    try:
        module_upstream.enqueue(json_reply(chat_completion("<think>plan the joke</think>Why did the chicken...")))
        r = tools.http(
            "POST",
            g.url + "/v1/chat/completions",
            json={"model": NO_THINK_MODEL, "messages": [{"role": "user", "content": "tell me a joke"}]},
        )
        assert r.status_code == 200, r.text
        sent = module_upstream.last
        assert sent.path == "/v1/chat/completions"  # the server root keeps the client's /v1/ path
        assert sent.json()["model"] == "Qwen3-32B"  # upstream_model_name
        assert sent.json()["messages"][-1]["content"] == "tell me a joke\n\n/no_think"
        assert sent.json()["temperature"] == 0.7 and sent.json()["top_k"] == 20
        assert r.json()["choices"][0]["message"]["content"] == "Why did the chicken..."  # filtering on
        assert NO_THINK_MODEL in [m["id"] for m in tools.http("GET", g.url + "/v1/models").json()["data"]]
        assert healthcheck(service, g.port) == 0
    finally:
        log = g.stop()
    assert "Traceback" not in log, log


def test_healthcheck_fails_like_curl_f(tmp_path):
    """The check fails on a 503 (upstream unreachable) and when nothing listens, as `curl -f` did."""
    service = config(project(tmp_path))["services"]["cot-proxy"]
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Status503)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert healthcheck(service, server.server_address[1]) != 0
    finally:
        server.shutdown()
        server.server_close()
    assert healthcheck(service, server.server_address[1]) != 0  # closed now: connection refused

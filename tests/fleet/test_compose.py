"""deploy/compose.yaml: `docker-compose config` (no Docker engine needed) accepts it, and the fleet it
describes hangs together: three proxy replicas sharing Redis and PostgreSQL, nginx in front listing each
of them, Prometheus scraping each replica's metrics port (never nginx), Grafana provisioned with
Prometheus and the shipped dashboard, stop grace periods longer than Gunicorn's graceful timeout."""

from __future__ import annotations

import json
import os
import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from tests.seeds import tools
from tests.support import ROOT

DEPLOY = ROOT / "deploy"
REPLICAS = ("proxy-1", "proxy-2", "proxy-3")


@cache
def _config() -> str:
    compose = tools.compose()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "UPSTREAM_", "POSTGRES_", "HOST_PORT"))}
    done = subprocess.run(
        [*compose, "-f", str(DEPLOY / "compose.yaml"), "config"],
        cwd=DEPLOY,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def config() -> dict[str, Any]:
    return yaml.safe_load(_config())


def mounts(service: dict[str, Any]) -> dict[str, Path]:
    """container path -> host path of each bind mount."""
    out = {}
    for v in service.get("volumes", []):
        if isinstance(v, dict):
            source, target = v.get("source"), v["target"]
        else:
            source, target = v.split(":")[:2]
        if source and source.startswith("/"):
            out[target] = Path(source)
    return out


def test_three_replicas_share_redis_and_postgresql():
    services = config()["services"]
    assert set(services) == {*REPLICAS, "nginx", "redis", "postgres", "prometheus", "grafana"}
    for name in REPLICAS:
        s = services[name]
        env = s["environment"]
        assert s["image"] == "cot-proxy:latest" and s["build"]["dockerfile"] == "Dockerfile"
        assert env["REDIS_URL"].startswith("redis://redis:6379/")
        assert env["DATABASE_URL"].startswith("postgresql://") and "@postgres:5432/" in env["DATABASE_URL"]
        assert env["OBSERVABILITY_PORT"] == "8801"
        assert env["PROMETHEUS_MULTIPROC_DIR"].startswith("/tmp/")  # fixed: kept across a container restart
        assert "ports" not in s, "replicas are reached through nginx only"
        grace = int(str(s["stop_grace_period"]).rstrip("s"))
        assert grace > int(env["GUNICORN_GRACEFUL_TIMEOUT"])
        assert env["TRUSTED_PROXIES"] == services["nginx"]["networks"]["fleet"]["ipv4_address"] + "/32"
    # nginx resolves names once: each replica keeps its own fixed address across restarts.
    addresses = [services[name]["networks"]["fleet"]["ipv4_address"] for name in REPLICAS]
    assert len(set(addresses)) == len(REPLICAS) and all(a.startswith("172.28.0.") for a in addresses)
    password = services["postgres"]["environment"]["POSTGRES_PASSWORD"]
    assert f"cotproxy:{password}@" in services["proxy-1"]["environment"]["DATABASE_URL"]


def test_nginx_balances_over_each_replica_and_streams_unbuffered():
    nginx = config()["services"]["nginx"]
    conf = mounts(nginx)["/etc/nginx/nginx.conf"]
    assert conf == DEPLOY / "compose" / "nginx.conf"
    text = conf.read_text()
    assert re.findall(r"^\s*server (proxy-\d):5000 max_fails=0;", text, re.M) == list(REPLICAS)
    assert re.search(r"^\s*proxy_buffering off;", text, re.M)
    # A draining replica refuses or resets (its backlog) before answering: the next one gets the request.
    assert re.search(r"^\s*proxy_next_upstream error timeout non_idempotent;", text, re.M)
    assert re.search(r"^\s*listen 8080;", text, re.M)
    assert [str(p["target"]) for p in nginx["ports"]] == ["8080"]


def test_prometheus_scrapes_each_replica():
    prometheus = config()["services"]["prometheus"]
    scrape = yaml.safe_load(mounts(prometheus)["/etc/prometheus/prometheus.yml"].read_text())
    [job] = scrape["scrape_configs"]
    targets = [t for group in job["static_configs"] for t in group["targets"]]
    assert targets == [f"{name}:8801" for name in REPLICAS]


def test_grafana_is_provisioned_with_prometheus_and_the_shipped_dashboard():
    grafana = config()["services"]["grafana"]
    m = mounts(grafana)
    provisioning = Path("/etc/grafana/provisioning")
    sources = yaml.safe_load((m[str(provisioning / "datasources")] / "prometheus.yaml").read_text())
    [datasource] = sources["datasources"]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    assert datasource["isDefault"] is True
    [provider] = yaml.safe_load((m[str(provisioning / "dashboards")] / "cot-proxy.yaml").read_text())["providers"]
    folder = provider["options"]["path"]
    dashboards = {target: source for target, source in m.items() if target.startswith(folder + "/")}
    assert list(dashboards.values()) == [DEPLOY / "grafana-dashboard.json"]
    assert json.loads((DEPLOY / "grafana-dashboard.json").read_text())["uid"] == "cot-proxy"

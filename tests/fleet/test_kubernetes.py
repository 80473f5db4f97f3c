"""deploy/kubernetes/: both overlays render with `kubectl kustomize` (offline) and every object is valid
against Kubernetes' own schemas (kubernetes-validate, strict: unknown fields fail); the ServiceMonitor
(a Prometheus Operator CRD, no schema here) is checked field by field. Then what the fleet needs:
probes on /livez and /readyz, a grace period that covers preStop and Gunicorn's graceful timeout,
non-root uid 10001, config.yaml from the ConfigMap (and it loads), keys from the Secret."""

from __future__ import annotations

import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from app.config import Config
from tests.seeds import tools
from tests.support import ROOT

KUBE = ROOT / "deploy" / "kubernetes"
OVERLAYS = ("single", "fleet")
K8S_VERSION = "1.32"


@cache
def _render(overlay: str) -> tuple[dict[str, Any], ...]:
    kubectl = tools.command("kubectl", "kubectl")
    done = subprocess.run(
        [kubectl, "kustomize", str(KUBE / "overlays" / overlay)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return tuple(d for d in yaml.safe_load_all(done.stdout) if d)


def rendered(overlay: str) -> list[dict[str, Any]]:
    return list(_render(overlay))


def one(docs: list[dict[str, Any]], kind: str, name: str = "cot-proxy") -> dict[str, Any]:
    """The object `name`; a ConfigMap by its generated name (`name` plus a content hash)."""
    found = [
        d
        for d in docs
        if d["kind"] == kind
        and (
            d["metadata"]["name"] == name or (kind == "ConfigMap" and d["metadata"]["name"].rpartition("-")[0] == name)
        )
    ]
    assert len(found) == 1, (kind, name, [d["metadata"]["name"] for d in found])
    return found[0]


def proxy_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    [container] = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_is_valid_against_the_kubernetes_schema(overlay):
    docs = rendered(overlay)
    checked = 0
    for doc in docs:
        if doc["kind"] == "ServiceMonitor":
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)  # raises, naming the field
        checked += 1
    assert checked == len(docs) - 1


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_monitor_is_structurally_right_and_selects_the_proxy_service(overlay):
    docs = rendered(overlay)
    sm = one(docs, "ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(sm) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(sm["spec"]) <= {"selector", "endpoints", "namespaceSelector", "jobLabel"}
    [endpoint] = sm["spec"]["endpoints"]
    assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme"}
    assert endpoint["path"] == "/metrics" and endpoint["interval"].endswith("s")
    selector = sm["spec"]["selector"]["matchLabels"]
    selected = [
        d for d in docs if d["kind"] == "Service" and selector.items() <= d["metadata"].get("labels", {}).items()
    ]
    assert [s["metadata"]["name"] for s in selected] == ["cot-proxy"]
    assert endpoint["port"] in {p["name"] for p in selected[0]["spec"]["ports"]}
    metrics_port = next(p for p in selected[0]["spec"]["ports"] if p["name"] == endpoint["port"])
    assert env_of(proxy_container(docs))["OBSERVABILITY_PORT"] == str(metrics_port["port"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_drain_and_security(overlay):
    docs = rendered(overlay)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    c = proxy_container(docs)
    assert c["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    env = env_of(c)
    pre_stop = int(c["lifecycle"]["preStop"]["exec"]["command"][-1])
    graceful = int(env["GUNICORN_GRACEFUL_TIMEOUT"])
    assert graceful >= 300, "long streams: minutes"
    assert pod["terminationGracePeriodSeconds"] > pre_stop + graceful
    assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "--uid 10001" in dockerfile and "USER 10001" in dockerfile
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert any(m["mountPath"] == "/tmp" for m in c["volumeMounts"])  # metrics dir, drain marker
    # The workers' directory (metrics, usage spools) on the pod's emptyDir: a container restarted after a
    # kill finds the spools of its killed workers there and writes their usage records.
    assert env["PROMETHEUS_MULTIPROC_DIR"].startswith("/tmp/")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_config_map_mounts_a_config_yaml_the_proxy_loads(overlay):
    docs = rendered(overlay)
    c = proxy_container(docs)
    env = env_of(c)
    path = Path(env["COT_PROXY_CONFIG"])
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == str(path.parent))
    volume = next(
        v for v in one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]
    )
    cm = one(docs, "ConfigMap", "cot-proxy-config")
    assert volume["configMap"]["name"] == cm["metadata"]["name"]  # the generated, hashed name
    config = Config.from_env({"COT_PROXY_CONFIG": str(KUBE / "base" / path.name), "UPSTREAM_API_KEY": "sk-x"})
    assert not config.echo_mode
    assert cm["data"][path.name] == (KUBE / "base" / path.name).read_text()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keys_come_from_the_secret(overlay):
    env = env_of(proxy_container(rendered(overlay)))
    for name in ("UPSTREAM_API_KEY", "GATEWAY_BEARER_TOKEN"):
        assert env[name]["secretKeyRef"]["name"] == "cot-proxy", name
    example = (KUBE / "base" / "secret.example.env").read_text()
    refs = {n for n, v in env.items() if isinstance(v, dict) and v["secretKeyRef"]["name"] == "cot-proxy"}
    assert refs <= {line.split("=")[0] for line in example.splitlines() if "=" in line and line[0] != "#"}


def test_single_is_one_pod_with_its_state_on_a_volume():
    docs = rendered("single")
    kinds = sorted(d["kind"] for d in docs)
    assert "HorizontalPodAutoscaler" not in kinds and "PodDisruptionBudget" not in kinds
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
    env = env_of(proxy_container(docs))
    assert "REDIS_URL" not in env and "DATABASE_URL" not in env
    assert env["USER_DB_PATH"].startswith("/srv/cot-proxy/data/")
    pvc = one(docs, "PersistentVolumeClaim", "cot-proxy-data")
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert {"name": "data", "persistentVolumeClaim": {"claimName": pvc["metadata"]["name"]}} in volumes


def test_fleet_shares_redis_and_postgresql_and_scales():
    docs = rendered("fleet")
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] >= 3
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    env = env_of(proxy_container(docs))
    assert env["REDIS_URL"]["secretKeyRef"] == {"name": "cot-proxy", "key": "REDIS_URL"}  # required
    assert env["DATABASE_URL"]["secretKeyRef"] == {"name": "cot-proxy", "key": "DATABASE_URL"}
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["minReplicas"] >= 3 and hpa["spec"]["scaleTargetRef"]["name"] == "cot-proxy"
    pdb = one(docs, "PodDisruptionBudget")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    service = one(docs, "Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    # The stores' pods are not the proxy's: neither its Service nor its budget selects them.
    for name in ("cot-proxy-redis", "cot-proxy-postgres"):
        store = next(d for d in docs if d["kind"] in ("Deployment", "StatefulSet") and d["metadata"]["name"] == name)
        labels = store["spec"]["template"]["metadata"]["labels"]
        assert not service["spec"]["selector"].items() <= labels.items(), name
    assert {d["metadata"]["name"] for d in docs if d["kind"] == "Service"} >= {"cot-proxy-redis", "cot-proxy-postgres"}

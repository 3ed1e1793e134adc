"""The Helm chart, linted and rendered offline by `helm-python-sdk` (Helm's Go SDK through a C
ABI: no helm binary, no cluster), each rendered manifest checked against the Kubernetes schemas
with `kubernetes-validate` (strict: unknown fields are errors)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

helm = pytest.importorskip("helm_python", reason="helm-python-sdk not installed")
kubernetes_validate = pytest.importorskip("kubernetes_validate")

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "budget-proxy"
EXAMPLES = CHART / "examples"
DASHBOARD = ROOT / "charts" / "grafana" / "budget-proxy.json"
RULES = ROOT / "charts" / "prometheus" / "rules.yml"
# oldest with native sidecars on by default, and the newest the schemas know
KUBE_VERSIONS = ("1.29.0", kubernetes_validate.utils.latest_version() + ".0")
OPERATOR_APIS = ["monitoring.coreos.com/v1", "monitoring.coreos.com/v1/ServiceMonitor",
                 "monitoring.coreos.com/v1/PrometheusRule"]
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}


@pytest.fixture(scope="module", autouse=True)
def quiet_helm():
    helm.disable_logging()


def example(name: str) -> dict[str, Any]:
    return yaml.safe_load((EXAMPLES / name).read_text())


def render(values: dict[str, Any] | None = None, *, api_versions: list[str] | None = None,
           ) -> list[dict[str, Any]]:
    """Every manifest `helm template demo CHART -n budget` would print."""
    opts: dict[str, Any] = {"name": "demo", "namespace": "budget", "is_install": True}
    if api_versions:
        opts["api_versions"] = api_versions
    with helm.Chart.load(CHART) as chart:
        # Chart.render has no api_versions argument; the library's options object has
        rendered = json.loads(helm._native.call_string(
            "helm_render", chart._raw(), json.dumps(values or {}), json.dumps(opts)))
    docs = []
    for name, text in sorted(rendered.items()):
        if name.endswith("NOTES.txt"):
            continue
        docs += [doc for doc in yaml.safe_load_all(text) if doc]
    return docs


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def validate(docs: list[dict[str, Any]]) -> None:
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            continue
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)


TOKEN = {"secrets": {"adminToken": "an-admin-token"}}
VALUE_SETS = {
    "defaults with an admin token": TOKEN,
    "open admin on purpose": {"proxy": {"allowOpenAdmin": True}},
    "sidecar example": example("sidecar-values.yaml"),
    "standalone redis example": example("standalone-redis-values.yaml"),
    "persistence and pdb": {**TOKEN, "persistence": {"enabled": True},
                            "podDisruptionBudget": {"enabled": True}},
}


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_chart_lints_clean(values):
    report = helm.lint(CHART, values, strict=True, kube_version="v1.30.0")
    assert report["errors"] == []
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert problems == [], problems


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
@pytest.mark.parametrize("operator", [False, True], ids=["plain", "prometheus-operator"])
def test_rendered_manifests_are_valid_kubernetes(values, operator):
    docs = render(values, api_versions=OPERATOR_APIS if operator else None)
    validate(docs)
    kinds = {doc["kind"] for doc in docs}
    assert {"Deployment", "Service", "Secret", "ServiceAccount", "ConfigMap"} <= kinds or (
        values.get("secrets", {}).get("existingSecret") and "Secret" not in kinds)
    assert ("ServiceMonitor" in kinds) is operator
    assert ("PrometheusRule" in kinds) is operator


def test_standalone_deployment():
    docs = render({"secrets": {"openaiApiKey": "sk-test", "adminToken": "t"},
                   "redis": {"url": "redis://redis:6379/0"}, "replicaCount": 2})
    (deployment,) = by_kind(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert "initContainers" not in pod
    (proxy,) = pod["containers"]
    assert proxy["name"] == "budget-proxy" and proxy["image"] == "budget-proxy:0.1.0"
    env = {e["name"]: e.get("value") for e in proxy["env"]}
    assert env["BUDGET_HOST"] == "0.0.0.0" and env["BUDGET_PORT"] == "8013"
    assert env["BUDGET_DATA_DIR"] == "/var/lib/budget-proxy"
    assert proxy["readinessProbe"]["httpGet"]["path"] == "/api/health"
    assert "tcpSocket" in proxy["livenessProbe"]  # a store outage must not restart the pod
    assert proxy["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    (secret,) = by_kind(docs, "Secret")
    assert secret["stringData"] == {"OPENAI_API_KEY": "sk-test", "BUDGET_ADMIN_TOKEN": "t",
                                    "BUDGET_REDIS_URL": "redis://redis:6379/0"}
    assert proxy["envFrom"] == [{"secretRef": {"name": secret["metadata"]["name"]}}]
    (service,) = by_kind(docs, "Service")
    assert service["spec"]["ports"][0]["port"] == 8013
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_sidecar_mode_is_a_native_sidecar_next_to_the_app():
    docs = render(example("sidecar-values.yaml"))
    (deployment,) = by_kind(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (proxy,) = pod["initContainers"]
    assert proxy["name"] == "budget-proxy" and proxy["restartPolicy"] == "Always"
    assert "startupProbe" in proxy  # the app starts once the proxy answers /health
    (app,) = pod["containers"]
    assert app["name"] == "summariser"
    env = {e["name"]: e.get("value") for e in app["env"]}
    assert env["OPENAI_BASE_URL"] == "http://127.0.0.1:8013/v1"
    assert env["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:8013/anthropic"
    assert not any(e["name"] == "OPENAI_API_KEY" for e in app["env"])
    proxy_env = {e["name"]: e for e in proxy["env"]}
    assert proxy_env["BUDGET_COMPONENT"]["value"] == "summariser"
    assert proxy_env["BUDGET_REDIS_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "budget-redis", "key": "url"}
    assert proxy["envFrom"] == [{"secretRef": {"name": "summariser-llm-keys"}}]
    assert by_kind(docs, "Secret") == []  # an existing Secret is used
    policies = [cm for cm in by_kind(docs, "ConfigMap")
                if cm["metadata"]["name"].endswith("-policies")]
    assert "summariser.toml" in policies[0]["data"]
    (service,) = by_kind(docs, "Service")
    assert [p["name"] for p in service["spec"]["ports"]] == ["http", "http-app"]
    assert by_kind(docs, "PodDisruptionBudget")[0]["spec"]["minAvailable"] == 1


def test_dashboard_configmap_and_prometheus_rule_carry_the_shared_files():
    docs = render(TOKEN, api_versions=OPERATOR_APIS)
    (dashboard,) = [cm for cm in by_kind(docs, "ConfigMap")
                    if cm["metadata"]["labels"].get("grafana_dashboard") == "1"]
    assert json.loads(dashboard["data"]["budget-proxy.json"]) == json.loads(
        DASHBOARD.read_text())
    (rule,) = by_kind(docs, "PrometheusRule")
    assert rule["spec"] == yaml.safe_load(RULES.read_text())
    (monitor,) = by_kind(docs, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"


@pytest.mark.parametrize(("values", "complaint"), [
    ({"mode": "sideways"}, "mode"),
    ({"replicaCount": "two"}, "replicaCount"),
    ({"proxy": {"failMode": "maybe"}}, "failMode"),
    ({"proxy": {"port": 70000}}, "port"),
    ({"redis": {"url": "http://not-redis"}}, "url"),
    ({"serviceMonitor": {"interval": "often"}}, "interval"),
    ({"replicas": 3}, "replicas"),  # a typo of replicaCount
])
def test_values_schema_rejects_bad_values(values, complaint):
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema({})  # the defaults pass
        with pytest.raises(helm.HelmValuesError) as err:
            chart.validate_schema(values)
    assert complaint in str(err.value)
    report = helm.lint(CHART, values)
    assert report["errors"] or any(m["severity"] == 3 for m in report["messages"])


@pytest.mark.parametrize(("values", "complaint"), [
    ({**TOKEN, "replicaCount": 3}, "needs the Redis store"),
    ({**TOKEN, "mode": "sidecar"}, "sidecar.app.image"),
    ({}, "secrets.adminToken"),  # an open admin API on the pod's network
])
def test_unsafe_combinations_refuse_to_render(values, complaint):
    with pytest.raises(helm.HelmError) as err:
        render(values)
    assert complaint in str(err.value)

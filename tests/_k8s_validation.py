"""Test helpers shared by the checks of the cluster manifests (tests/test_k8s_examples.py
for examples/, tests/test_install.py for deploy/kubernetes/): reading YAML, validating
core objects through the ``kubernetes`` client's strict models, running promtool and
kubectl, reading RBAC grants and dashboards, and the metric names kpigate exports.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
PROMETHEUS = ROOT / "examples" / "prometheus"
DASHBOARD = ROOT / "examples" / "grafana" / "kpigate.json"
TOOL_LIMIT_S = 120  # a ceiling for a wedged tool, not a performance threshold

# -- the metric contract -----------------------------------------------------------------------
#: Series the rollout controller exports (the Job's port 9102, or the operator's /metrics).
CONTROLLER_METRICS = {
    "kpigate_rollout_info", "kpigate_rollout_stage", "kpigate_rollout_phase",
    "kpigate_rollout_paused",
    "kpigate_traffic_weight", "kpigate_kpi_estimate", "kpigate_kpi_difference",
    "kpigate_kpi_interval_lower", "kpigate_kpi_interval_upper", "kpigate_kpi_samples",
    "kpigate_decisions_total", "kpigate_evaluations_total",
    "kpigate_last_evaluation_timestamp_seconds", "kpigate_metrics_unavailable",
    "kpigate_readiness_waiting_seconds", "kpigate_stage_decision_eta_seconds",
    "kpigate_stage_forecast_duration_seconds", "kpigate_stage_max_duration_seconds",
}
#: Series the in-cluster collector exports (histograms by their sample names).
COLLECTOR_METRICS = {
    "kpigate_stage_requests_total", "kpigate_stage_errors_total",
    "kpigate_stage_latency_seconds_bucket", "kpigate_stage_latency_seconds_count",
    "kpigate_stage_latency_seconds_sum", "kpigate_stage_labelled_total",
    "kpigate_stage_score_bucket", "kpigate_stage_segment_labelled_total",
    "kpigate_stage_value_count", "kpigate_stage_value_sum", "kpigate_stage_value_product_sum",
    "kpigate_collector_stage", "kpigate_cloudevents_total", "kpigate_labels_total",
    "kpigate_collector_rejected_requests_total",
}
#: Series the operator exports about itself, with their labels (the interface the lead
#: fixed; the operator's own test checks its exposition against it).
OPERATOR_METRICS = {
    "kpigate_operator_leader": {"identity"},
    "kpigate_operator_rollouts": {"namespace", "phase"},
    "kpigate_operator_reconcile_errors_total": {"namespace"},
    "kpigate_operator_worker_restarts_total": {"namespace", "rollout"},
    "kpigate_operator_watch_restarts_total": {"resource"},
}
#: Series the embedded router exports (its /metrics, namespace="local"), as far as the
#: dashboard shows them.
ROUTER_METRICS = {
    "kpigate_requests_total", "kpigate_request_duration_seconds_bucket",
    "kpigate_rollout_stage", "kpigate_traffic_weight",
}
#: Seldon Core's executor (v1) and model (v2) series.
SELDON_METRICS = {
    "seldon_api_executor_server_requests_seconds_bucket",
    "seldon_api_executor_server_requests_seconds_count",
    "seldon_api_executor_server_requests_seconds_sum",
    "seldon_model_infer_total", "seldon_model_infer_seconds_total",
}
KNOWN_METRICS = (CONTROLLER_METRICS | COLLECTOR_METRICS | SELDON_METRICS | ROUTER_METRICS
                 | set(OPERATOR_METRICS))

#: The Prometheus Operator's ServiceMonitor/PodMonitor fields (monitoring.coreos.com/v1, as
#: its API reference documents them) that kpigate's manifests may use. No copy of its CRD
#: is vendored, so the monitors are checked against this shape rather than its schema.
MONITOR_SPEC = {"selector", "namespaceSelector", "jobLabel", "podTargetLabels",
                "targetLabels", "sampleLimit", "endpoints", "podMetricsEndpoints"}
MONITOR_ENDPOINT = {"port", "path", "interval", "scrapeTimeout", "scheme", "honorLabels",
                    "relabelings", "metricRelabelings"}


# -- files and tools ---------------------------------------------------------------------------
def docs(path: Path) -> list[Any]:
    """The non-empty YAML documents of ``path``."""
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def validate(model_name: str, data: dict[str, Any]) -> Any:
    """``data`` through the kubernetes client model ``model_name`` (unknown fields fail)."""
    import kubernetes
    from kubernetes import client

    model = getattr(client, model_name)
    if not hasattr(model, "model_validate"):
        pytest.fail(f"kubernetes {kubernetes.__version__}: its models do not validate strictly "
                    "(no model_validate); install the version setup.py pins for tests")
    return model.model_validate(data)


def walk(node: Any) -> Iterator[tuple[str, Any]]:
    """Every (key, value) pair of a nested mapping/list, depth first."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            yield from walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item)


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found on PATH: run scripts/setup.sh (it installs Debian's "
                    "prometheus package) or install Prometheus' promtool")
    return path


def run(cmd: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True,
                          timeout=TOOL_LIMIT_S, check=False)


def grants(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) of every rule of a Role or ClusterRole."""
    return {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(?:kpigate|seldon)_[a-z_]+", expr))


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel of a Grafana dashboard, rows' nested panels included."""
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))


def rules(path: Path = PROMETHEUS / "rules.yml") -> list[dict[str, Any]]:
    """The alerting rules of ``path`` (its recording rules: :func:`records`)."""
    return [r for g in docs(path)[0]["groups"] for r in g["rules"] if "alert" in r]


def records(path: Path = PROMETHEUS / "rules.yml") -> list[dict[str, Any]]:
    """The recording rules of ``path``."""
    return [r for g in docs(path)[0]["groups"] for r in g["rules"] if "record" in r]


# -- the image and its security settings ------------------------------------------------------
def dockerfile() -> list[str]:
    lines = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def dockerfile_uid() -> int:
    (user,) = [line.split()[1] for line in dockerfile() if line.startswith("USER ")]
    return int(user)


def secure(container: dict[str, Any], pod: dict[str, Any]) -> None:
    """The container runs as the image's non-root user, read-only, without capabilities,
    with a writable /tmp and resource limits."""
    ctx = container["securityContext"]
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == dockerfile_uid()
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]], "a read-only root needs a writable /tmp"
    assert set(mounts.values()) <= set(volumes)
    assert {"requests", "limits"} <= set(container["resources"])
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])

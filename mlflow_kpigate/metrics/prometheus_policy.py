"""What a cluster rollout's policy asks of Prometheus: where requests come from, and
whether the Prometheus source can measure it at all.

Both are pure functions of the policy and the Seldon version (1, 2, or ``None`` without
Seldon), so the deployer can refuse a policy before anything is deployed.
"""

from __future__ import annotations

from mlflow_kpigate.core.errors import PolicyError, UsageError
from mlflow_kpigate.policy import LATENCY, KpiKind, KpiSpec, Policy, RequestsFrom

__all__ = ["check_policy", "requests_source"]


def requests_source(policy: Policy, seldon_version: int | None) -> RequestsFrom:
    """Where requests, errors and latency come from: the policy's choice, else Seldon's
    executor with Seldon v1 and the kpigate collector otherwise."""
    chosen = policy.metrics.prometheus.requests_from
    if chosen is not None:
        return chosen
    return RequestsFrom.SELDON if seldon_version == 1 else RequestsFrom.KPIGATE


def _is_latency(kpi: KpiSpec) -> bool:
    return kpi.kind is KpiKind.QUANTILE or (kpi.kind is KpiKind.MEAN and kpi.source == LATENCY)


def check_policy(policy: Policy, seldon_version: int | None) -> None:
    """Refuse a policy this source cannot measure (``PolicyError``, exit code 2).

    Seldon v2 exports a count and a total of seconds per model: a mean but no spread, so
    neither a latency quantile nor the gate's (log-scale) latency mean can be tested from
    it; a zero-variance stand-in would hold forever instead of failing loudly.
    """
    if seldon_version not in (1, 2, None):
        raise UsageError(f"-C seldon_version={seldon_version}: must be 1 or 2")
    source = requests_source(policy, seldon_version)
    problems: list[str] = []
    if source is RequestsFrom.SELDON and seldon_version is None:
        problems.append("metrics.prometheus.requests_from: 'seldon' needs a Seldon "
                        "deployment (-t kpigate:/seldon/NAMESPACE); use 'kpigate'")
    if source is RequestsFrom.SELDON and seldon_version == 2:
        for i, kpi in enumerate(policy.kpis):
            if _is_latency(kpi):
                problems.append(
                    f"kpis[{i}]: {kpi.name!r} needs a latency distribution, but Seldon v2 "
                    "exports only a count and a total of seconds per model; set "
                    "metrics.prometheus.requests_from: kpigate to use the kpigate "
                    "collector's latency histogram")
    if problems:
        raise PolicyError(problems, policy.source)

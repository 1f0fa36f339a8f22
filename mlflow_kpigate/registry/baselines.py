"""Baseline KPIs of a model version, from earlier rollout runs and its training run.

Baseline KPIs (:meth:`BaselineKpis.baseline_kpis`)
    Two kinds of values describe the baseline version, and they are not pooled:

    * *live* values: the final ``baseline.<kpi>`` metric of earlier kpigate rollout runs
      that served this version as the baseline, and the final ``candidate.<kpi>`` of the
      rollout that promoted it (experiment ``kpigate-rollouts``, finished or killed runs,
      the 50 most recent of each kind);
    * *offline* values: the version's training run metric (``kpi.registry_metric`` or the
      KPI's name) with its history over steps (``get_metric_history``), e.g. one value per
      validation window or fold.

    Live values win when there are at least two of them, because the gate compares the
    candidate's *live* KPI with μ ∓ kσ and offline (validation-set) metrics can differ
    systematically from live ones; otherwise the offline history wins when it has at least
    two values (σ needs two); otherwise a single value is used (live first) with σ None, so
    no control limit is drawn from it. ``n`` is the number of values behind μ and σ (σ is
    the sample standard deviation). The run metric ``prevalence``, when logged as a
    fraction, becomes the baseline's prevalence for planning, ``label_coverage`` its label
    coverage.

Planning figures (``kpigate plan --model``, the create-time forecast)
    A KPI's per-request figures are run metrics named after its registry metric:
    ``<key>.unit_sd`` (σ of one request's value on the tested scale, e.g. of log-latency),
    ``<key>.rate`` and ``<key>.segments`` (a fairness KPI's rate in a typical segment and
    the number of segments).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException

from mlflow_kpigate.core.baseline import BaselineKpi, RegistryBaseline
from mlflow_kpigate.core.refs import ModelRef
from mlflow_kpigate.policy import Policy
from mlflow_kpigate.registry.errors import MlflowAccess, is_not_found
from mlflow_kpigate.registry.runs import ROLLOUT_EXPERIMENT

#: How many earlier rollout runs of each kind are read for a baseline.
MAX_ROLLOUT_RUNS = 50


def _finite(values: Sequence[float]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def _summary(values: Sequence[float]) -> BaselineKpi:
    std = statistics.stdev(values) if len(values) > 1 else None
    return BaselineKpi(mean=statistics.fmean(values), std=std, n=len(values))


def _planning_figures(policy: Policy, metrics: dict[str, float]
                      ) -> dict[str, dict[str, Any]]:
    """Each KPI's ``<key>.unit_sd``, ``.rate`` and ``.segments`` run metrics, if logged."""
    out: dict[str, dict[str, Any]] = {}
    for kpi in policy.kpis:
        key = kpi.registry_metric or kpi.name
        found: dict[str, Any] = {}
        for field in ("unit_sd", "rate", "segments"):
            value = metrics.get(f"{key}.{field}")
            if value is None or not math.isfinite(value) or value < 0:
                continue
            if field == "segments":
                if value >= 2 and value == int(value):
                    found[field] = int(value)
            else:
                found[field] = float(value)
        if found:
            out[kpi.name] = found
    return out


class BaselineKpis(MlflowAccess):
    """Reading a version's baseline KPIs (which source wins: the module docstring)."""

    def baseline_kpis(self, ref: ModelRef, policy: Policy) -> RegistryBaseline:
        """μ, σ and n per policy KPI for ``ref`` (which source wins: module docstring)."""
        offline: dict[str, list[float]] = {}
        prevalence: float | None = None
        coverage = 1.0
        planning: dict[str, dict[str, Any]] = {}
        run_label = ""
        if ref.run_id:
            metrics = self._run_metrics(ref.run_id)
            run_label = f"run {ref.run_id}"
            for kpi in policy.kpis:
                key = kpi.registry_metric or kpi.name
                if key not in metrics:
                    continue
                history = self._call(f"read metric history {key!r} of run {ref.run_id}",
                                     self.client.get_metric_history, ref.run_id, key)
                ordered = sorted(history, key=lambda m: (m.step, m.timestamp))
                values = _finite([m.value for m in ordered]) or _finite([metrics[key]])
                if values:
                    offline[kpi.name] = values
            value = metrics.get("prevalence")
            if value is not None and 0 < value < 1:
                prevalence = float(value)
            value = metrics.get("label_coverage")
            if value is not None and 0 < value <= 1:
                coverage = float(value)
            planning = _planning_figures(policy, metrics)

        live = self._rollout_values(ref, policy)
        kpis: dict[str, BaselineKpi] = {}
        notes: list[str] = []
        for kpi in policy.kpis:
            lv, ov = live.get(kpi.name, []), offline.get(kpi.name, [])
            if len(lv) >= 2:
                values, where = lv, f"{len(lv)} earlier rollouts"
            elif len(ov) >= 2:
                values, where = ov, f"{run_label} history ({len(ov)} values)"
            elif lv:
                values, where = lv, "1 earlier rollout"
            elif ov:
                values, where = ov, run_label
            else:
                continue
            kpis[kpi.name] = replace(_summary(values), **planning.get(kpi.name, {}))
            notes.append(f"{kpi.name} from {where}")
        detail = "; ".join(notes) if notes else "no matching metrics"
        return RegistryBaseline(kpis=kpis, prevalence=prevalence, label_coverage=coverage,
                                source=f"{ref.uri}: {detail}")

    def _run_metrics(self, run_id: str) -> dict[str, float]:
        """Latest metric values of a run; empty when the run was deleted."""
        with self._mlflow(f"read run {run_id}"):
            try:
                return dict(self.client.get_run(run_id).data.metrics)
            except MlflowException as exc:
                if is_not_found(exc):
                    return {}
                raise

    def _rollout_values(self, ref: ModelRef, policy: Policy) -> dict[str, list[float]]:
        """Final live KPI values of this version from earlier rollout runs."""
        experiment = self._call("read experiment " + ROLLOUT_EXPERIMENT,
                                self.client.get_experiment_by_name, ROLLOUT_EXPERIMENT)
        if experiment is None:
            return {}
        queries = (
            (f"tags.`kpigate.baseline_version` = '{ref.version}'", "baseline."),
            (f"tags.`kpigate.candidate_version` = '{ref.version}' and "
             "tags.`kpigate.outcome` = 'promoted'", "candidate."),
        )
        values: dict[str, list[float]] = {}
        for query, prefix in queries:
            runs = self._call("search earlier rollout runs", self.client.search_runs,
                              [experiment.experiment_id], filter_string=query,
                              max_results=MAX_ROLLOUT_RUNS, order_by=["attributes.start_time DESC"])
            for run in runs:
                tags = run.data.tags
                model = tags.get("kpigate.model")
                if prefix == "baseline.":
                    model = tags.get("kpigate.baseline_model", model)
                if model != ref.name:
                    continue
                if run.info.status not in (RunStatus.to_string(RunStatus.FINISHED),
                                           RunStatus.to_string(RunStatus.KILLED)):
                    continue  # a rollout in progress (or crashed) is not a finished measurement
                for kpi in policy.kpis:
                    value = run.data.metrics.get(prefix + kpi.name)
                    if value is not None and math.isfinite(value):
                        values.setdefault(kpi.name, []).append(float(value))
        return values

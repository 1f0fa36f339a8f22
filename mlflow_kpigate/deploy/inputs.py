"""What every rollout starts from, whatever its backend: the versions, the policy, the baseline.

* :func:`resolve_versions`: the candidate and the baseline as registry refs (the baseline
  defaults to the champion alias);
* :func:`freeze_policy`: the user's policy with ``-C stages`` applied, copied into the
  rollout's directory so that every later decision (and its replay) uses the same one;
* :func:`save_registry_baseline` / :func:`load_registry_baseline`: the registry baseline
  KPIs read at creation, kept beside the state so restarts decide on the same figures;
* :func:`forecast_lines`: with ``-C expected_rps``, the forecast time to decision of every
  stage from the registry baseline, and a warning per stage that cannot decide within its
  ``max_duration`` (a warning only: the rollout starts anyway).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from mlflow_kpigate.core.baseline import RegistryBaseline
from mlflow_kpigate.core.durations import format_duration
from mlflow_kpigate.core.errors import PolicyError, UsageError
from mlflow_kpigate.core.forecast import fmt_eta
from mlflow_kpigate.core.refs import ModelRef
from mlflow_kpigate.deploy.config import DeploymentConfig
from mlflow_kpigate.policy import KpiKind, Policy, load_policy
from mlflow_kpigate.rollout.ports import Registry

BASELINE_FILE = "baseline_kpis.json"
POLICY_FILE = "policy.yaml"


def default_policy_path() -> Path:
    """The packaged label-free default policy."""
    return Path(str(resources.files("mlflow_kpigate") / "policies" / "default.yaml"))


def freeze_policy(cfg: DeploymentConfig, directory: Path) -> tuple[Policy, Path]:
    """Load the user's policy (with ``-C stages`` applied) and freeze a copy in ``directory``.

    Problems are attributed to what the user typed: ``-C stages=…`` for the stages it
    replaced, ``-C policy=…`` for the rest of the file.
    """
    source = cfg.policy or default_policy_path()

    def override(doc: dict[str, Any]) -> None:
        if cfg.stages:
            doc["stages"] = cfg.stages

    try:
        policy = load_policy(source, override=override)
    except PolicyError as exc:
        raise _attributed(exc, cfg) from None
    target = directory / POLICY_FILE
    target.write_text(f"# frozen copy of {source} for this rollout\n"
                      + yaml.safe_dump(dict(policy.raw), sort_keys=False))
    return load_policy(target), target


def _attributed(exc: PolicyError, cfg: DeploymentConfig) -> PolicyError:
    """``exc`` with each problem blamed on the ``-C`` key that caused it."""
    file_label = f"-C policy={cfg.policy}" if cfg.policy else (exc.source or "the policy")
    stage_problems = [p for p in exc.problems if cfg.stages and p.startswith("stages")]
    other = [p for p in exc.problems if p not in stage_problems]
    stages_label = f"-C stages={cfg.stages}"
    if not stage_problems:
        return PolicyError(other, file_label)
    if not other:
        return PolicyError(stage_problems, stages_label)
    return PolicyError([f"{stages_label}: {p}" for p in stage_problems]
                       + [f"{file_label}: {p}" for p in other])


def tracking_uri() -> str:
    """The MLflow tracking URI in effect (``MLFLOW_TRACKING_URI`` or MLflow's default)."""
    import mlflow

    return str(mlflow.get_tracking_uri())


def resolve_versions(registry: Registry, model_uri: str, baseline_uri: str | None
                     ) -> tuple[ModelRef, ModelRef]:
    """(candidate, baseline) registry refs; the baseline defaults to the champion alias."""
    candidate = registry.resolve(model_uri)
    baseline = (registry.resolve(baseline_uri) if baseline_uri
                else registry.default_baseline(candidate.name))
    if (baseline.name, baseline.version) == (candidate.name, candidate.version):
        raise UsageError(f"{model_uri}: the candidate is the baseline itself "
                         f"({baseline.uri}); give a different -C baseline")
    return candidate, baseline


def output_warnings(registry: Registry, policy: Policy, refs: dict[str, ModelRef]
                    ) -> list[str]:
    """Warnings before a rollout whose score-based KPIs a model cannot feed (it returns
    labels): said now, with the fix, rather than as "insufficient data" for days."""
    needing = [k.name for k in policy.kpis if k.kind is KpiKind.AUC]
    if not needing:
        return []
    out = []
    for role, ref in refs.items():
        if registry.output_kind(ref) == "labels":
            out.append(f"kpigate: warning: the {role} {ref.uri} returns labels, not scores: "
                       f"{', '.join(needing)} need scores; log the model with "
                       "pyfunc_predict_fn='predict_proba' (the rollout goes on and "
                       "reports this reason for those KPIs)")
    return out


def forecast_lines(policy: Policy, baseline: RegistryBaseline | None,
                   cfg: DeploymentConfig) -> list[str]:
    """The create-time forecast as progress lines (none without ``-C expected_rps``)."""
    if cfg.expected_rps is None:
        return []
    # Imported here: the forecast needs scipy.stats (half a second), and every create,
    # status or delete imports this module.
    from mlflow_kpigate.gate.forecast import plan_forecast

    rps = cfg.expected_rps
    fc = plan_forecast(policy, baseline or RegistryBaseline(), rps, cfg.label_delay or 0.0,
                       f"-C expected_rps={rps:g}")
    decisive = [k.name for k in policy.kpis if k.decides]
    left_out = [n.split(":", 1)[0] for n in fc.notes if n.split(":", 1)[0] in decisive]
    if len(left_out) == len(decisive):
        return [f"kpigate: no forecast: the registry baseline has no planning figures for "
                f"{', '.join(left_out)} ({'; '.join(fc.notes)}); the controller forecasts "
                "from the measured traffic once the rollout runs"]
    lag = format_duration(fc.label_lag_s)
    lines = [f"kpigate: forecast at {rps:g} requests/s, labels after {lag}: "
             f"{fc.path()}; full rollout {fmt_eta(fc.full_rollout_s)} for a candidate "
             "equal to the baseline"]
    for stage in fc.stages:
        lines.append(f"kpigate:   {stage.stage}: {fmt_eta(stage.duration_s)} ({stage.binds} "
                     f"binds); a candidate at −detect rolled back after "
                     f"{fmt_eta(stage.margin_duration_s)} ({stage.margin_binds or '—'})")
    if left_out:
        lines.append(f"kpigate: the forecast leaves out {', '.join(left_out)} (no planning "
                     "figures in the registry; see `kpigate plan --model`): the controller "
                     "adds them from the measured traffic")
    lines += [f"kpigate: warning: {w}" for w in fc.warnings()]
    return lines


def save_registry_baseline(directory: Path, baseline: RegistryBaseline | None) -> Path:
    """Keep the registry baseline beside the state; returns the file written."""
    path = directory / BASELINE_FILE
    data = baseline.to_dict() if baseline is not None else {"kpis": {}}
    path.write_text(json.dumps(data, indent=2, allow_nan=False))
    return path


def load_registry_baseline(directory: Path) -> RegistryBaseline | None:
    """The registry baseline saved by :func:`save_registry_baseline` (None if empty)."""
    path = directory / BASELINE_FILE
    if not path.exists():
        return None
    baseline = RegistryBaseline.from_dict(json.loads(path.read_text()), str(path))
    return baseline if baseline.kpis else None

"""The rollout run: one MLflow run per rollout in ``kpigate-rollouts``.

It is tagged with the deployment, model and both versions (``kpigate.*``), gets the
rollout's parameters and the policy file, one metric batch and one decision JSON per
evaluation, the report at the end, and the ``kpigate.outcome`` tag that
:mod:`mlflow_kpigate.registry.baselines` later reads back.

The experiment is tagged ``mlflow.experimentKind = custom_model_development`` (the tag
MLflow 3's UI reads and writes through its "experiment type" selector). Without it MLflow
3.x infers a GenAI experiment: the experiment opens on an empty traces overview and the
rollout run (which has no model *outputs*) is listed under "Evaluation runs". An existing
experiment gets the tag only when it has none, so a kind a user picked in the UI stands.
MLflow 3.17's UI also follows a browser-wide "workflow type" (GenAI / machine learning)
switch; links kpigate writes therefore carry ``?workflowType=machine_learning``
(:data:`ML_WORKFLOW_QUERY`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path

from mlflow.entities import Metric, Param, RunStatus
from mlflow.exceptions import MlflowException

from mlflow_kpigate.core.decision import Action, Decision
from mlflow_kpigate.core.errors import KpigateError
from mlflow_kpigate.core.refs import ModelRef
from mlflow_kpigate.registry.errors import MlflowAccess
from mlflow_kpigate.registry.limits import (
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_VALUE,
    MAX_PARAMS_PER_BATCH,
    truncate,
)

#: The experiment that holds one run per rollout.
ROLLOUT_EXPERIMENT = "kpigate-rollouts"
#: ``decision.code`` metric per action.
DECISION_CODES: Mapping[Action, int] = {Action.PROMOTE: 1, Action.HOLD: 0, Action.ROLLBACK: -1}
#: The experiment tag MLflow 3's UI reads to pick an experiment's layout, and its value for
#: a classic (runs, metrics, models) experiment.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
ML_EXPERIMENT_KIND = "custom_model_development"
#: The UI query that shows an experiment as machine learning in MLflow 3.17's UI.
ML_WORKFLOW_QUERY = "workflowType=machine_learning"


class RolloutRuns(MlflowAccess):
    """Starting, logging to and finishing the rollout's run."""

    def _rollout_experiment_id(self) -> str:
        exp = self._call("read experiment " + ROLLOUT_EXPERIMENT,
                         self.client.get_experiment_by_name, ROLLOUT_EXPERIMENT)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                self._call("restore experiment " + ROLLOUT_EXPERIMENT,
                           self.client.restore_experiment, exp.experiment_id)
            if not (exp.tags or {}).get(EXPERIMENT_KIND_TAG):
                # Made by an older kpigate: give it the kind (a user's own choice stands).
                self._call("tag experiment " + ROLLOUT_EXPERIMENT,
                           self.client.set_experiment_tag, exp.experiment_id,
                           EXPERIMENT_KIND_TAG, ML_EXPERIMENT_KIND)
            return str(exp.experiment_id)
        with self._mlflow("create experiment " + ROLLOUT_EXPERIMENT):
            try:
                return str(self.client.create_experiment(
                    ROLLOUT_EXPERIMENT, tags={EXPERIMENT_KIND_TAG: ML_EXPERIMENT_KIND}))
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
        # Another process created it between the two calls.
        exp = self._call("read experiment " + ROLLOUT_EXPERIMENT,
                         self.client.get_experiment_by_name, ROLLOUT_EXPERIMENT)
        if exp is None:
            raise KpigateError(f"experiment {ROLLOUT_EXPERIMENT!r} at {self.tracking_uri} was "
                               "created and is gone again; retry")
        return str(exp.experiment_id)

    def start_rollout_run(self, *, deployment: str, candidate: ModelRef, baseline: ModelRef,
                          policy_file: Path, params: Mapping[str, str]) -> str:
        """Create the rollout's run in ``kpigate-rollouts``; log the policy; return its id."""
        exp_id = self._rollout_experiment_id()
        tags = {
            "kpigate.deployment": deployment,
            "kpigate.model": candidate.name,
            "kpigate.candidate_version": candidate.version,
            "kpigate.baseline_version": baseline.version,
            "kpigate.candidate_uri": candidate.uri,
            "kpigate.baseline_uri": baseline.uri,
            "kpigate.baseline_model": baseline.name,
        }
        name = f"{deployment} {candidate.name} v{candidate.version} vs v{baseline.version}"
        run = self._call("create the rollout run", self.client.create_run, exp_id,
                         run_name=name, tags={k: truncate(v) for k, v in tags.items()})
        run_id = str(run.info.run_id)
        items = [Param(str(k), truncate(str(v), MAX_PARAM_VALUE)) for k, v in params.items()]
        for start in range(0, len(items), MAX_PARAMS_PER_BATCH):
            self._call("log rollout parameters", self.client.log_batch, run_id,
                       params=items[start:start + MAX_PARAMS_PER_BATCH])
        self._call("upload the policy file", self.client.log_artifact, run_id,
                   str(policy_file), "policy")
        return run_id

    def log_evaluation(self, run_id: str, step: int, decision: Decision,
                       weights_percent: float, timestamp_ms: int | None = None) -> None:
        """Log one evaluation: per-KPI evidence metrics at ``step``, and the decision JSON.

        Metrics (finite values only): ``candidate.<kpi>``, ``baseline.<kpi>``,
        ``delta.<kpi>``, ``lower.<kpi>``, ``upper.<kpi>``, ``traffic.candidate_percent``,
        ``decision.code`` (promote 1, hold 0, rollback −1) and ``stage_index``, in one
        ``log_batch`` call (split only beyond MLflow's 1000 metrics per batch).
        """
        ts = int(time.time() * 1000) if timestamp_ms is None else int(timestamp_ms)
        metrics: list[Metric] = []

        def add(key: str, value: float | None) -> None:
            if value is not None and math.isfinite(float(value)):
                metrics.append(Metric(key, float(value), ts, int(step)))

        for ev in decision.evidence:
            add(f"candidate.{ev.kpi}", ev.candidate_value)
            add(f"baseline.{ev.kpi}", ev.baseline_value)
            add(f"delta.{ev.kpi}", ev.delta)
            add(f"lower.{ev.kpi}", ev.lower)
            add(f"upper.{ev.kpi}", ev.upper)
        add("traffic.candidate_percent", weights_percent)
        add("decision.code", DECISION_CODES[decision.action])
        add("stage_index", decision.stage_index)
        for start in range(0, len(metrics), MAX_METRICS_PER_BATCH):
            self._call(f"log evaluation {step}", self.client.log_batch, run_id,
                       metrics=metrics[start:start + MAX_METRICS_PER_BATCH])
        self._call(f"upload decision {step}", self.client.log_text, run_id,
                   decision.to_json(indent=2), f"decisions/{int(step):05d}.json")

    def log_run_image(self, run_id: str, path: Path, *, key: str, step: int) -> None:
        """Log the PNG at ``path`` as the run's image ``key`` at ``step`` (MLflow's image
        charts on the run page), unless the run already has that key at that step."""
        from PIL import Image  # comes with matplotlib, which drew the image

        prefix = f"{key.replace('/', '~')}+step+{int(step)}+"
        existing = self._call("list the run's images", self.client.list_artifacts, run_id,
                              "images")
        if any(Path(f.path).name.startswith(prefix) for f in existing):
            return
        with Image.open(path) as image:
            self._call(f"log image {key}", self.client.log_image, run_id, image.convert("RGB"),
                       key=key, step=int(step))

    def finish_rollout_run(self, run_id: str, *, outcome: str,
                           report_dir: Path | None) -> None:
        """Tag the outcome, upload the report under ``report/`` and end the run.

        The run ends FINISHED whatever the outcome (a rollback is a successful rollout
        *process*; the ``kpigate.outcome`` tag says what happened), KILLED when
        ``outcome`` is ``aborted``.
        """
        self._call("tag the rollout outcome", self.client.set_tag, run_id, "kpigate.outcome",
                   truncate(outcome))
        if report_dir is not None and Path(report_dir).is_dir():
            self._call("upload the report", self.client.log_artifacts, run_id,
                       str(report_dir), "report")
        status = RunStatus.KILLED if outcome == "aborted" else RunStatus.FINISHED
        self._call("end the rollout run", self.client.set_terminated, run_id,
                   RunStatus.to_string(status))

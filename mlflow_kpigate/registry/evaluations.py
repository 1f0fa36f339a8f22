"""Evaluation records in the rollout run: written per evaluation, read back for replay.

Each evaluation of a rollout is uploaded with its inputs as ``evaluations/NNNNN.json``
(:class:`~mlflow_kpigate.core.evaluation.Evaluation` plus its decision). With the frozen
policy the run already holds (``policy/``), ``kpigate replay --run-id`` can re-judge a
rollout from the run a user finds in the MLflow UI, without its state store.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from mlflow_kpigate.core.decision import Decision
from mlflow_kpigate.core.errors import UsageError
from mlflow_kpigate.core.evaluation import Evaluation
from mlflow_kpigate.registry.errors import MlflowAccess

#: Run artifact directory of the evaluation records.
EVALUATIONS_DIR = "evaluations"
#: Run artifact directory of the rollout's frozen policy (written by ``start_rollout_run``).
POLICY_DIR = "policy"


class EvaluationRecords(MlflowAccess):
    """Uploading and reading back the rollout run's evaluation records and policy."""

    def log_evaluation_record(self, run_id: str, evaluation: Evaluation) -> None:
        """Upload the evaluation with its inputs as ``evaluations/NNNNN.json``."""
        record = {**evaluation.to_dict(), "decision": evaluation.decision.to_dict()}
        self._call(f"upload evaluation {evaluation.number}", self.client.log_text, run_id,
                   json.dumps(record, allow_nan=False),
                   f"{EVALUATIONS_DIR}/{int(evaluation.number):05d}.json")

    def evaluation_records(self, run_id: str) -> list[Evaluation]:
        """The evaluation records of a rollout run, in order (empty if it kept none)."""
        files = self._call(f"list the evaluations of run {run_id}", self.client.list_artifacts,
                           run_id, EVALUATIONS_DIR,
                           not_found=lambda: UsageError(f"--run-id {run_id}: no such run at "
                                                        f"{self.tracking_uri}"))
        if not files:
            return []
        with tempfile.TemporaryDirectory(prefix="kpigate-replay-") as tmp:
            self._call(f"download the evaluations of run {run_id}",
                       self.client.download_artifacts, run_id, EVALUATIONS_DIR, tmp)
            records = [json.loads((Path(tmp) / item.path).read_text())
                       for item in sorted(files, key=lambda f: f.path)]
        return [Evaluation.from_dict(r, Decision.from_dict(r["decision"])) for r in records]

    def rollout_policy(self, run_id: str, directory: Path) -> Path:
        """Download the rollout run's frozen policy into ``directory``; its path."""
        local = self._call(f"download the policy of run {run_id}",
                           self.client.download_artifacts, run_id, POLICY_DIR, str(directory),
                           not_found=lambda: UsageError(f"--run-id {run_id}: the run has no "
                                                        "policy artifact; is it a kpigate "
                                                        "rollout run?"))
        files = sorted(Path(local).glob("*.y*ml"))
        if not files:
            raise UsageError(f"--run-id {run_id}: the run's {POLICY_DIR}/ holds no YAML file")
        return files[0]

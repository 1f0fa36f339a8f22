"""The candidate's final live KPIs on its MLflow 3 LoggedModel.

A version registered from ``mlflow.<flavor>.log_model`` in MLflow 3 points at a
LoggedModel (its ``model_id``, or its ``models:/m-…`` source where the registry API
leaves ``model_id`` empty, as 3.17's does), whose page and the experiment's model table list the
model's metrics. :meth:`LoggedModelKpis.log_model_kpis` logs the rollout's final
``candidate.<kpi>`` and ``delta.<kpi>`` values there, through the rollout run (MLflow
links a model metric to the run that logged it), and tags the LoggedModel with the
outcome.

The metrics are logged with the key, value, step and timestamp the run already holds for
the last evaluation, so the run's own metric history gains no point (MLflow stores an
identical metric once) and a repeated call adds nothing to the model either.

A version without a LoggedModel (registered by MLflow 2, or from a run's artifacts
without one) is not an error: the call says so in the text it returns, which the caller
records in the rollout's audit log.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from mlflow.entities import Metric
from mlflow.exceptions import MlflowException

from mlflow_kpigate.core.refs import ModelRef
from mlflow_kpigate.registry.errors import MlflowAccess, is_not_found
from mlflow_kpigate.registry.limits import MAX_METRICS_PER_BATCH, truncate
from mlflow_kpigate.registry.versions import model_id_of


class LoggedModelKpis(MlflowAccess):
    """Logging final KPIs and outcome tags to a version's LoggedModel."""

    def logged_model_id(self, ref: ModelRef) -> str | None:
        """The ``model_id`` of ``ref``'s LoggedModel, None when it has none."""
        version = self._call(f"read {ref.label}", self.client.get_model_version, ref.name,
                             ref.version)
        return model_id_of(version)

    def log_model_kpis(self, ref: ModelRef, run_id: str, metrics: Mapping[str, float], *,
                       step: int, timestamp_ms: int, tags: Mapping[str, str]) -> str:
        """Log ``metrics`` (finite values) and ``tags`` to ``ref``'s LoggedModel through
        the run ``run_id``; what was done, in a few words."""
        model_id = self.logged_model_id(ref)
        if model_id is None:
            return f"{ref.label} has no LoggedModel (registered without one); no model metrics"
        with self._mlflow(f"read logged model {model_id}"):
            try:
                self.client.get_logged_model(model_id)
            except MlflowException as exc:
                if not is_not_found(exc):
                    raise
                return f"LoggedModel {model_id} of {ref.label} no longer exists; no model metrics"
        items = [Metric(key, float(value), int(timestamp_ms), int(step), model_id=model_id)
                 for key, value in metrics.items() if math.isfinite(float(value))]
        for start in range(0, len(items), MAX_METRICS_PER_BATCH):
            self._call(f"log model metrics of {model_id}", self.client.log_batch, run_id,
                       metrics=items[start:start + MAX_METRICS_PER_BATCH])
        if tags:
            self._call(f"tag logged model {model_id}", self.client.set_logged_model_tags,
                       model_id, {k: truncate(v) for k, v in tags.items()})
        return f"LoggedModel {model_id} of {ref.label}: {len(items)} metrics, {len(tags)} tags"

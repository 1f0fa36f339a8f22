"""What a registered version's model returns, read from its signature: scores or labels.

A classifier logged with MLflow's defaults (``mlflow.sklearn.log_model`` and friends call
``predict``) returns labels; AUC and the other score-based KPIs then have nothing to
measure for the whole rollout. The deployers ask :meth:`ModelOutputs.output_kind` before a
rollout starts, so the user hears it then, with the fix, instead of reading
"insufficient data" for days. The answer comes from the ``MLmodel`` file only (nothing is
loaded or run): a pyfunc ``predict_fn`` of ``predict_proba``, ``predict_log_proba`` or
``decision_function`` gives scores whatever the signature says (MLflow infers the
signature from ``predict`` even then); otherwise the signature decides — integer,
boolean and string outputs are labels, floating-point outputs (one column of
probabilities, or one per class) are scores; a model logged without one is ``unknown``.
"""

from __future__ import annotations

import tempfile
from typing import Any, Literal

from mlflow_kpigate.core.refs import ModelRef
from mlflow_kpigate.registry.errors import MlflowAccess

OutputKind = Literal["scores", "labels", "unknown"]

_LABEL_KINDS = {"i", "u", "b", "U", "S", "O"}  # numpy dtype kinds of label outputs
_LABEL_TYPES = {"boolean", "integer", "long", "string", "binary"}
_SCORE_FUNCTIONS = {"predict_proba", "predict_log_proba", "decision_function"}


def output_kind_of(signature: Any, predict_fn: str | None = None) -> OutputKind:
    """``scores``, ``labels`` or ``unknown`` for an MLflow ``ModelSignature`` (or None) and
    the pyfunc flavor's ``predict_fn``."""
    if predict_fn in _SCORE_FUNCTIONS:
        return "scores"
    outputs = getattr(signature, "outputs", None)
    specs = list(getattr(outputs, "inputs", None) or [])
    if not specs:
        return "unknown"
    kinds = set()
    for spec in specs:
        spec_type = spec.type
        if hasattr(spec_type, "kind"):  # a TensorSpec: a numpy dtype
            kinds.add("labels" if spec_type.kind in _LABEL_KINDS else "scores")
        else:  # a ColSpec: an MLflow DataType
            name = getattr(spec_type, "name", str(spec_type))
            kinds.add("labels" if name in _LABEL_TYPES else "scores")
    return "labels" if kinds == {"labels"} else "scores"


class ModelOutputs(MlflowAccess):
    """Reading a version's output kind from its ``MLmodel`` file."""

    def output_kind(self, ref: ModelRef) -> OutputKind:
        """What ``ref``'s model returns; ``unknown`` when its MLmodel cannot be read."""
        import mlflow
        from mlflow.models import Model

        try:
            with tempfile.TemporaryDirectory(prefix="kpigate-mlmodel-") as tmp:
                path = mlflow.artifacts.download_artifacts(
                    artifact_uri=f"{ref.storage_uri.rstrip('/')}/MLmodel", dst_path=tmp,
                    tracking_uri=self.tracking_uri)
                model = Model.load(path)
                pyfunc = model.flavors.get("python_function") or {}
                return output_kind_of(model.signature, pyfunc.get("predict_fn"))
        except Exception:  # a warning's input only: never block a rollout on it
            return "unknown"

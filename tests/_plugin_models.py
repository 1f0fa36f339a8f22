"""Shared parts of the tests that drive the kpigate target as a user would (test_plugin,
test_exit_codes, test_github_action): a policy fast enough for a test, and registered
versions of one model, good and broken."""

from __future__ import annotations

from pathlib import Path
from typing import Any

COLUMNS = list("abcd")

#: Decides within seconds on a few hundred requests.
FAST = """
evaluation: {interval: 1s, maturity: 0s}
stage_defaults: {min_samples: {requests: 80, labelled: 40}, min_dwell: 1s, max_duration: 10m}
stages: [{traffic: 20, promote_margin_scale: 3}, 50, 100]
kpis:
  - {name: error_rate, kind: proportion, metric: error_rate, role: critical, margin: 0.05}
  - {name: accuracy, kind: proportion, metric: accuracy, role: guardrail, margin: 0.2}
"""

#: A candidate whose every prediction raises (logged as MLflow "model from code").
BROKEN_MODEL = '''
import mlflow


class Broken(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        raise RuntimeError("candidate model is broken")


mlflow.models.set_model(Broken())
'''


def register_good_and_broken(name: str, root: Path, n: int = 2000) -> tuple[Any, Any]:
    """Register versions 1 and 2 (logistic regressions that output probabilities) and 3
    (always raises) of ``name`` in the current tracking store, alias ``champion`` on 1;
    returns the training data ``(x, y)``."""
    import mlflow
    import numpy as np
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = pd.DataFrame(rng.normal(size=(n, 4)), columns=COLUMNS)
    y = (x.a + rng.normal(size=n) > 1).astype(int)
    for c in (0.5, 1.0):
        with mlflow.start_run():
            mlflow.sklearn.log_model(LogisticRegression(C=c).fit(x, y), name="model",
                                     registered_model_name=name, input_example=x.head(2),
                                     pyfunc_predict_fn="predict_proba")
    broken = root / "broken_model.py"
    broken.write_text(BROKEN_MODEL)
    with mlflow.start_run():
        mlflow.pyfunc.log_model(name="model", python_model=str(broken),
                                registered_model_name=name)
    mlflow.MlflowClient().set_registered_model_alias(name, "champion", "1")
    return x, y

"""The MLflow pyfunc wrapper shared by the fraud example's models (XGBoost and LightGBM).

The wrapper takes the raw transaction columns (strings for the categorical ones, as a client
sends them), encodes them exactly as training did (:func:`encode_features`), scores them
with the booster saved as an artifact, and returns a 1-D float array in [0, 1]:

    score = 0.5 * p / t                       if p <  t
    score = 0.5 + 0.5 * (p - t) / (1 - t)     if p >= t

where ``p`` is the booster's fraud probability and ``t`` the decision threshold chosen on
calibration data (``train.py``). The map is monotone, so ranking KPIs (AUC) are those of
``p``, and ``score >= 0.5`` exactly when ``p >= t``: a router that flags ``score >= 0.5``
applies the model's own threshold. The score is therefore a *rescaled* probability, not a
calibrated one; ``p`` itself is recoverable from ``score`` and ``t`` (logged as the
``threshold`` metric and stored in the model's ``scorer.json`` artifact).

Each model is logged as MLflow "model from code": this file is stored with the model and
run by ``mlflow.pyfunc.load_model`` (under a generated module name), which then finds the
model through ``mlflow.models.set_model`` at the bottom; no pickled objects are involved. So
the file imports nothing from the example, and loads the booster's library lazily: a
LightGBM model does not need XGBoost installed, nor the reverse. ``train.py`` imports it
as ``fraud_pyfunc`` for :func:`encode_features` and :func:`rescale`, so that training and
serving share one encoding.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow.models
import mlflow.pyfunc
import numpy as np
import pandas as pd

#: Artifact keys of a logged model.
BOOSTER_ARTIFACT = "booster"
CONFIG_ARTIFACT = "config"


def encode_features(frame: pd.DataFrame, features: Sequence[str],
                    categories: Mapping[str, Sequence[str]]) -> np.ndarray:
    """The model matrix: ``features`` in order, categorical strings as integer codes.

    A category the model never saw, or a missing or non-numeric value, becomes NaN, which
    both boosters treat as missing. Columns not in ``features`` are ignored.
    """
    missing = [c for c in features if c not in frame.columns]
    if missing:
        raise ValueError(f"transactions lack the model's input columns {missing}")
    out = np.empty((len(frame), len(features)), dtype=np.float64)
    for j, column in enumerate(features):
        values = frame[column]
        if column in categories:
            out[:, j] = _codes(values, categories[column])
        elif pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            out[:, j] = values.to_numpy(dtype=np.float64, na_value=np.nan)
        else:
            out[:, j] = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64,
                                                                          na_value=np.nan)
    return out


def _codes(values: pd.Series, categories: Sequence[str]) -> np.ndarray:
    """Integer codes of ``values`` in ``categories`` (NaN when unknown or missing)."""
    if len(values) <= 256:  # one transaction per request: a dict lookup beats pandas
        lookup = {name: float(i) for i, name in enumerate(categories)}
        return np.fromiter((lookup.get(v, np.nan) if isinstance(v, str) else np.nan
                            for v in values.tolist()), dtype=np.float64, count=len(values))
    codes = pd.Index(list(categories)).get_indexer(values.astype("string").fillna(""))
    out = codes.astype(np.float64)
    out[codes < 0] = np.nan
    return out


def rescale(p: np.ndarray, threshold: float) -> np.ndarray:
    """Map probabilities ``p`` to scores with ``score >= 0.5`` exactly when ``p >= threshold``."""
    t = float(threshold)
    if not 0.0 < t < 1.0:
        raise ValueError(f"threshold must lie strictly between 0 and 1, got {t}")
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    below = np.minimum(0.5 * p / t, np.nextafter(0.5, 0.0))
    above = 0.5 + 0.5 * (p - t) / (1.0 - t)
    return np.where(p < t, below, np.minimum(above, 1.0))


class FraudScoreModel(mlflow.pyfunc.PythonModel):
    """Pyfunc model: raw transactions in, one rescaled fraud score per row out."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        """Read ``scorer.json`` (kind, features, categories, threshold) and the booster."""
        config = json.loads(Path(context.artifacts[CONFIG_ARTIFACT]).read_text())
        self._features: list[str] = list(config["features"])
        self._categories: dict[str, list[str]] = {k: list(v) for k, v in
                                                  config["categories"].items()}
        self._threshold = float(config["threshold"])
        self._kind = str(config["kind"])
        booster_path = context.artifacts[BOOSTER_ARTIFACT]
        if self._kind == "xgboost":
            import xgboost

            booster = xgboost.Booster()
            booster.load_model(booster_path)
            # One request is one transaction: a single thread avoids pool overhead, and
            # concurrent requests are parallel across the server's workers.
            booster.set_param({"nthread": 1})
            self._booster: Any = booster
        elif self._kind == "lightgbm":
            import lightgbm

            self._booster = lightgbm.Booster(model_file=booster_path)
        else:
            raise ValueError(f"scorer.json: unknown model kind {self._kind!r}")

    def probabilities(self, frame: pd.DataFrame) -> np.ndarray:
        """The booster's fraud probability ``p`` for each row (before rescaling)."""
        matrix = encode_features(frame, self._features, self._categories)
        if self._kind == "xgboost":
            return np.asarray(self._booster.inplace_predict(matrix), dtype=np.float64)
        return np.asarray(self._booster.predict(matrix, num_threads=1), dtype=np.float64)

    def predict(self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> np.ndarray:
        """Rescaled fraud scores in [0, 1], one per row; flag a transaction at ``>= 0.5``."""
        if not isinstance(model_input, pd.DataFrame):
            model_input = pd.DataFrame(model_input)
        return rescale(self.probabilities(model_input), self._threshold)


if __name__ != "fraud_pyfunc":  # run by MLflow as the model's code, not imported as a helper
    mlflow.models.set_model(FraudScoreModel())

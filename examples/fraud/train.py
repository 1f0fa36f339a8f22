"""Train, log and register the fraud case study's models in MLflow.

Three versions of one registered model (default ``fraud-detector``):

``baseline``   XGBoost, 100 trees, all features; alias ``champion``.
``candidate``  LightGBM, all features; alias ``challenger``.
``degraded``   (``--degraded``) LightGBM without the ``spend_deviation`` and ``hour``
               features; alias ``degraded``. A deliberately worse candidate that a rollout
               should roll back.

The generated transactions are split 60/20/20 into training, calibration and validation
sets. Each model's decision threshold is chosen on the calibration set: the baseline and
the candidate flag enough transactions to catch ``--recall-target`` (0.876, the case
study's baseline recall) of the fraud; the degraded model keeps the baseline's alert
volume (the same share of transactions flagged, as a fraud team with a fixed number of
analysts would), so its weaker ranking shows up as lost recall and precision. The
threshold is baked into the pyfunc's output (``fraud_pyfunc.rescale``): ``score >= 0.5``
flags a transaction.

Metrics on each version's run, computed on the validation set at ``score >= 0.5``:

* ``precision``, ``recall``, ``auc``, ``fpr_fairness`` (the policy's KPI names): one value
  per validation fold, ``step`` = fold 0..4, so the registry baseline has a mean and a
  standard deviation. Latency is not known offline and is not logged.
* ``validation_precision``, ``validation_recall``, ``validation_auc``,
  ``validation_fpr_fairness``, ``validation_fpr``, ``validation_flag_rate``: the same on
  the whole validation set; plus ``threshold`` (the probability cut ``t``),
  ``fit_seconds`` and the set sizes.

``fpr_fairness`` is min/max of the false positive rate across regions. False positives
are rare (about 0.1% of legitimate transactions), so per-fold values of this index are
noisy at the default size; the whole-validation value is steadier.

Usage::

    python examples/fraud/train.py --tracking-uri sqlite:///mlflow.db --model-name fraud-detector \
        [--degraded] [--n 200000] [--seed 0] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.models.signature import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types.schema import ColSpec, Schema, TensorSpec
from scipy.stats import rankdata

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # imported from elsewhere (tests, the end-to-end script)
    sys.path.insert(0, str(HERE))

import data  # noqa: E402
import fraud_pyfunc  # noqa: E402

DEFAULT_MODEL_NAME = "fraud-detector"
DEFAULT_EXPERIMENT = "fraud-example"
RECALL_TARGET = 0.876
N_FOLDS = 5
MIN_N = 5000
ROLE_ALIASES = {"baseline": "champion", "candidate": "challenger", "degraded": "degraded"}
#: Features the degraded candidate is trained without.
DEGRADED_DROPS: tuple[str, ...] = ("spend_deviation", "hour", "velocity_1h")


@dataclass(frozen=True)
class ModelSpec:
    """How one version is built: booster family, features, and how its threshold is set."""

    role: str
    kind: str                       # "xgboost" or "lightgbm"
    features: tuple[str, ...]
    calibrate: str                  # "recall": the recall target; "alerts": baseline flag rate
    description: str


@dataclass(frozen=True)
class RegisteredVersion:
    """One trained and registered version, as ``train_and_register`` returns it."""

    role: str
    kind: str
    model_name: str
    version: str
    alias: str
    run_id: str
    threshold: float
    fit_seconds: float
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def uri(self) -> str:
        """``models:/NAME/VERSION``."""
        return f"models:/{self.model_name}/{self.version}"

    @property
    def alias_uri(self) -> str:
        """``models:/NAME@ALIAS``."""
        return f"models:/{self.model_name}@{self.alias}"


def model_specs(degraded: bool) -> list[ModelSpec]:
    """The versions to build, baseline first (the degraded one needs its alert rate)."""
    all_features = data.FEATURE_COLUMNS
    specs = [
        ModelSpec("baseline", "xgboost", all_features, "recall",
                  "Fraud baseline: XGBoost, 100 trees, all features."),
        ModelSpec("candidate", "lightgbm", all_features, "recall",
                  "Fraud candidate: LightGBM, all features."),
    ]
    if degraded:
        specs.append(ModelSpec(
            "degraded", "lightgbm",
            tuple(c for c in all_features if c not in DEGRADED_DROPS), "alerts",
            "Deliberately degraded candidate: LightGBM without "
            f"{' and '.join(DEGRADED_DROPS)}, at the baseline's alert volume."))
    return specs


# --------------------------------------------------------------------------- metrics

def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties count one half); NaN without both classes."""
    y = np.asarray(y)
    n_pos = int((y == 1).sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(score)
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def kpi_metrics(y: np.ndarray, score: np.ndarray, region: np.ndarray) -> dict[str, float]:
    """The policy's offline KPIs at ``score >= 0.5`` plus the overall FPR and flag rate."""
    y = np.asarray(y)
    flagged = np.asarray(score) >= 0.5
    tp = int((flagged & (y == 1)).sum())
    fp = int((flagged & (y == 0)).sum())
    pos = int((y == 1).sum())
    neg = len(y) - pos
    fprs = []
    for name in data.REGIONS:
        negatives = (y == 0) & (region == name)
        if negatives.any():
            fprs.append((flagged & negatives).sum() / negatives.sum())
    top = max(fprs) if fprs else 0.0
    return {
        "precision": tp / (tp + fp) if tp + fp else math.nan,
        "recall": tp / pos if pos else math.nan,
        "auc": roc_auc(y, score),
        # No false positives anywhere is perfect balance.
        "fpr_fairness": float(min(fprs) / top) if top > 0 else 1.0,
        "fpr": fp / neg if neg else math.nan,
        "flag_rate": float(flagged.mean()) if len(y) else math.nan,
    }


def recall_threshold(y: np.ndarray, p: np.ndarray, target: float) -> float:
    """The largest probability cut that flags at least ``target`` of the positives."""
    positives = np.sort(np.asarray(p)[np.asarray(y) == 1])[::-1]
    if len(positives) == 0:
        raise ValueError("the calibration set has no fraud; generate more transactions (--n)")
    k = min(len(positives), max(1, math.ceil(target * len(positives))))
    return _valid_threshold(float(positives[k - 1]))


def alert_threshold(p: np.ndarray, flag_rate: float) -> float:
    """The probability cut that flags the share ``flag_rate`` of transactions."""
    ordered = np.sort(np.asarray(p))[::-1]
    k = min(len(ordered), max(1, round(flag_rate * len(ordered))))
    return _valid_threshold(float(ordered[k - 1]))


def _valid_threshold(t: float) -> float:
    return float(np.clip(t, 1e-6, 1.0 - 1e-6))


# --------------------------------------------------------------------------- training

def _fit(kind: str, x: np.ndarray, y: np.ndarray, seed: int, out: Path,
         threads: int | None = None) -> Path:
    """Fit one booster and save it under ``out``; returns the booster file. ``threads``:
    the booster's ``n_jobs`` (None: the library's default, every core)."""
    if kind == "xgboost":
        import xgboost

        model = xgboost.XGBClassifier(n_estimators=100, max_depth=6, learning_rate=0.1,
                                      tree_method="hist", random_state=seed, n_jobs=threads)
        model.fit(x, y)
        path = out / "booster.ubj"
        model.get_booster().save_model(str(path))
        return path
    if kind == "lightgbm":
        import lightgbm

        model = lightgbm.LGBMClassifier(n_estimators=200, learning_rate=0.05, num_leaves=31,
                                        min_child_samples=20, random_state=seed, verbose=-1,
                                        n_jobs=threads)
        model.fit(x, y)
        path = out / "booster.txt"
        model.booster_.save_model(str(path))
        return path
    raise ValueError(f"unknown model kind {kind!r}")


def signature() -> ModelSignature:
    """Input: the raw transaction columns (routing key optional); output: 1-D scores."""
    types = {"amount": "double", "hour": "long", "velocity_1h": "long",
             "spend_deviation": "double"}
    inputs = [ColSpec(types.get(c, "string"), c) for c in data.FEATURE_COLUMNS]
    inputs.append(ColSpec("long", data.ROUTING_KEY_COLUMN, required=False))
    return ModelSignature(inputs=Schema(inputs),
                          outputs=Schema([TensorSpec(np.dtype(np.float64), (-1,))]))


def _pip_requirements(kind: str) -> list[str]:
    """Pinned to what trained the model, so ``mlflow models serve`` rebuilds the same stack."""
    booster = __import__(kind)
    return [f"mlflow=={mlflow.__version__}", f"numpy=={np.__version__}",
            f"pandas=={pd.__version__}", f"{kind}=={booster.__version__}"]


def _experiment_id(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location)


def train_and_register(tracking_uri: str | None = None,
                       model_name: str = DEFAULT_MODEL_NAME,
                       n: int = 200_000, seed: int = 0, degraded: bool = False,
                       experiment: str = DEFAULT_EXPERIMENT,
                       artifact_location: str | None = None,
                       recall_target: float = RECALL_TARGET,
                       log: bool = True, threads: int | None = None
                       ) -> list[RegisteredVersion]:
    """Generate data, train the models, log and register them; returns the versions.

    ``tracking_uri`` (default: MLflow's current one) is used for this call only; the
    process-wide tracking URI is restored afterwards. ``artifact_location`` applies when the
    experiment is created here (MLflow's default otherwise: ``./mlruns`` for a SQLite
    store). Sets the aliases ``champion`` (baseline), ``challenger`` and ``degraded``.
    ``threads`` caps the boosters' training threads (default: every core); give 1 where the
    cores are busy: LightGBM's threads stall behind a descheduled one at every split.
    """
    if n < MIN_N:
        raise ValueError(f"n must be at least {MIN_N} so calibration sees enough fraud, "
                         f"got {n}")
    if not 0.0 < recall_target < 1.0:
        raise ValueError(f"recall_target must lie strictly between 0 and 1, got {recall_target}")
    previous_uri = mlflow.get_tracking_uri()
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    try:
        return _train_and_register(model_name, n, seed, degraded, experiment,
                                   artifact_location, recall_target, log, threads)
    finally:
        mlflow.set_tracking_uri(previous_uri)


def _say(log: bool, message: str) -> None:
    if log:
        print(message, file=sys.stderr, flush=True)


def _train_and_register(model_name: str, n: int, seed: int, degraded: bool, experiment: str,
                        artifact_location: str | None, recall_target: float,
                        log: bool, threads: int | None) -> list[RegisteredVersion]:
    client = MlflowClient()
    experiment_id = _experiment_id(client, experiment, artifact_location)
    frame = data.generate(n, seed)
    order = np.random.default_rng(seed + 1).permutation(n)
    cut1, cut2 = int(0.6 * n), int(0.8 * n)
    parts = {"train": frame.iloc[order[:cut1]], "calibration": frame.iloc[order[cut1:cut2]],
             "validation": frame.iloc[order[cut2:]]}
    labels = {k: v[data.LABEL_COLUMN].to_numpy() for k, v in parts.items()}
    regions = parts["validation"]["region"].to_numpy()
    folds = np.arange(len(regions)) % N_FOLDS
    example = parts["validation"].head(5)[data.request_columns()].reset_index(drop=True)
    _say(log, f"generated {n:,} transactions (seed {seed}), fraud {frame['label'].mean():.2%}; "
         f"train/calibration/validation {cut1:,}/{cut2 - cut1:,}/{n - cut2:,}")

    results: list[RegisteredVersion] = []
    baseline_flag_rate: float | None = None
    for spec in model_specs(degraded):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            x_train = fraud_pyfunc.encode_features(parts["train"], spec.features,
                                                   data.CATEGORICAL_COLUMNS)
            started = time.perf_counter()
            booster_path = _fit(spec.kind, x_train, labels["train"], seed, out, threads)
            fit_seconds = time.perf_counter() - started

            # Score calibration data with an unthresholded scorer to pick the threshold.
            config = {"kind": spec.kind, "features": list(spec.features),
                      "categories": {k: list(v) for k, v in data.CATEGORICAL_COLUMNS.items()},
                      "threshold": 0.5}
            config_path = out / "scorer.json"
            config_path.write_text(json.dumps(config, indent=2))
            scorer = _local_scorer(booster_path, config_path)
            p_cal = scorer.probabilities(parts["calibration"])
            if spec.calibrate == "alerts" and baseline_flag_rate is not None:
                threshold = alert_threshold(p_cal, baseline_flag_rate)
            else:
                threshold = recall_threshold(labels["calibration"], p_cal, recall_target)
            if spec.role == "baseline":
                baseline_flag_rate = float((p_cal >= threshold).mean())
            config["threshold"] = threshold
            config_path.write_text(json.dumps(config, indent=2))

            score = fraud_pyfunc.rescale(scorer.probabilities(parts["validation"]), threshold)
            pooled = kpi_metrics(labels["validation"], score, regions)
            per_fold = [kpi_metrics(labels["validation"][folds == f], score[folds == f],
                                    regions[folds == f]) for f in range(N_FOLDS)]

            with mlflow.start_run(experiment_id=experiment_id,
                                  run_name=f"{spec.role}-{spec.kind}") as run:
                mlflow.log_params({
                    "role": spec.role, "kind": spec.kind, "features": ",".join(spec.features),
                    "calibration": spec.calibrate, "recall_target": recall_target,
                    "n": n, "seed": seed, "folds": N_FOLDS,
                })
                mlflow.set_tags({"fraud.role": spec.role})
                info = mlflow.pyfunc.log_model(
                    name="model",
                    python_model=str(HERE / "fraud_pyfunc.py"),
                    artifacts={fraud_pyfunc.BOOSTER_ARTIFACT: str(booster_path),
                               fraud_pyfunc.CONFIG_ARTIFACT: str(config_path)},
                    signature=signature(),
                    input_example=example,
                    pip_requirements=_pip_requirements(spec.kind),
                    registered_model_name=model_name,
                )
                metrics = _log_metrics(pooled, per_fold, threshold, fit_seconds,
                                       {k: len(v) for k, v in labels.items()}, info.model_id)
        version = str(info.registered_model_version)
        alias = ROLE_ALIASES[spec.role]
        client.update_model_version(model_name, version, description=spec.description)
        client.set_model_version_tag(model_name, version, "fraud.role", spec.role)
        client.set_registered_model_alias(model_name, alias, version)
        result = RegisteredVersion(spec.role, spec.kind, model_name, version, alias,
                                   run.info.run_id, threshold, fit_seconds, metrics)
        results.append(result)
        _say(log, f"{spec.role:<9} {spec.kind:<8} {result.uri} (@{alias}) fit {fit_seconds:.1f}s "
             f"precision {pooled['precision']:.3f} recall {pooled['recall']:.3f} "
             f"auc {pooled['auc']:.3f} fpr_fairness {pooled['fpr_fairness']:.2f}")
    return results


def _local_scorer(booster_path: Path, config_path: Path) -> fraud_pyfunc.FraudScoreModel:
    """A FraudScoreModel loaded straight from files (what MLflow does with the artifacts)."""
    model = fraud_pyfunc.FraudScoreModel()
    context = mlflow.pyfunc.PythonModelContext(
        artifacts={fraud_pyfunc.BOOSTER_ARTIFACT: str(booster_path),
                   fraud_pyfunc.CONFIG_ARTIFACT: str(config_path)},
        model_config={})
    model.load_context(context)
    return model


def _log_metrics(pooled: dict[str, float], per_fold: Sequence[dict[str, float]],
                 threshold: float, fit_seconds: float, sizes: dict[str, int],
                 model_id: str | None) -> dict[str, float]:
    """Log per-fold KPI values (step = fold) and whole-validation figures; returns the latter."""
    for fold, values in enumerate(per_fold):
        for key in ("precision", "recall", "auc", "fpr_fairness"):
            if math.isfinite(values[key]):
                mlflow.log_metric(key, values[key], step=fold, model_id=model_id)
    summary = {f"validation_{k}": v for k, v in pooled.items() if math.isfinite(v)}
    summary.update({"threshold": threshold, "fit_seconds": fit_seconds,
                    "n_train": sizes["train"], "n_calibration": sizes["calibration"],
                    "n_validation": sizes["validation"]})
    for key, value in summary.items():
        mlflow.log_metric(key, float(value), model_id=model_id)
    return summary


# --------------------------------------------------------------------------- CLI

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train the fraud example's models and register them in MLflow.")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or MLflow's "
                             "default, sqlite:///mlflow.db)")
    parser.add_argument("--model-name", default=DEFAULT_MODEL_NAME,
                        help=f"registered model name (default {DEFAULT_MODEL_NAME})")
    parser.add_argument("--degraded", action="store_true",
                        help="also register a deliberately degraded candidate (@degraded)")
    parser.add_argument("--n", type=int, default=200_000,
                        help="transactions to generate (default 200000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--experiment", default=DEFAULT_EXPERIMENT,
                        help=f"MLflow experiment (default {DEFAULT_EXPERIMENT})")
    parser.add_argument("--artifact-location", default=None,
                        help="artifact location when the experiment is created")
    parser.add_argument("--recall-target", type=float, default=RECALL_TARGET,
                        help=f"recall the thresholds aim for (default {RECALL_TARGET})")
    parser.add_argument("--json", action="store_true",
                        help="print the registered versions as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; prints the registered model URIs. Exit 2 on bad input."""
    args = _parser().parse_args(argv)
    started = time.perf_counter()
    try:
        versions = train_and_register(
            args.tracking_uri, args.model_name, n=args.n, seed=args.seed,
            degraded=args.degraded, experiment=args.experiment,
            artifact_location=args.artifact_location, recall_target=args.recall_target)
    except ValueError as exc:
        print(f"train.py: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([{**asdict(v), "uri": v.uri, "alias_uri": v.alias_uri}
                          for v in versions], indent=2))
    else:
        for v in versions:
            print(f"{v.role:<9} {v.uri:<28} {v.alias_uri}")
    _say(True, f"done in {time.perf_counter() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

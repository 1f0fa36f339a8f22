"""Real models and worker processes for the candidate-isolation tests.

``save_sklearn`` saves a tiny scikit-learn LogisticRegression (columns ``a``, ``b``, with a
signature, probabilities out) as an MLflow model directory; ``save_behaviour`` saves a
pyfunc :class:`Behaviour` model that misbehaves on request: each row's ``mode`` column
says what ``predict`` does (``ok``; ``sleep`` for ``seconds``; ``exit`` calls
``os._exit(1)``; ``raise``). This file travels with the model as code, so the worker
process can import the class. ``started`` runs a :class:`CandidateProcess` for a test
and always stops it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel


class Behaviour(PythonModel):
    """Does what the first row's ``mode`` says, then scores 0.25 for every row."""

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> Any:
        mode = str(model_input["mode"].iloc[0])
        if mode == "sleep":
            time.sleep(float(model_input["seconds"].iloc[0]))
        elif mode == "exit":
            os._exit(1)
        elif mode == "raise":
            raise ValueError("boom from the model")
        return np.full(len(model_input), 0.25)


def save_sklearn(path: Path) -> Path:
    """A LogisticRegression on ``a``, ``b`` saved with its signature (predict_proba)."""
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=200), "b": rng.normal(size=200)})
    y = (frame["a"] + 0.5 * frame["b"] + rng.normal(scale=0.5, size=200) > 0).astype(int)
    model = LogisticRegression().fit(frame, y)
    mlflow.sklearn.save_model(
        model, str(path), signature=infer_signature(frame, model.predict_proba(frame)),
        pyfunc_predict_fn="predict_proba", pip_requirements=["scikit-learn"])
    return path


def save_behaviour(path: Path) -> Path:
    """The :class:`Behaviour` model, with this file as its code."""
    import mlflow.pyfunc

    mlflow.pyfunc.save_model(str(path), python_model=Behaviour(),
                             code_paths=[__file__], pip_requirements=[])
    return path


def body(mode: str = "ok", seconds: float = 0.0, rows: int = 1) -> bytes:
    import json

    return json.dumps({"dataframe_split": {
        "columns": ["mode", "seconds"], "data": [[mode, seconds]] * rows}}).encode()


@contextmanager
def socket_dir() -> Iterator[Path]:
    """A short temporary directory (a Unix socket path holds at most 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="kpg-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def started(model: Path, tmp: Path, **options: Any) -> Iterator[Any]:
    """A ready :class:`CandidateProcess` serving ``model``; stopped (by pid) at the end."""
    from mlflow_kpigate.backends.local.candidate_process import CandidateProcess

    with socket_dir() as sockets:
        process = CandidateProcess(
            sockets / "cand.sock", str(model), f"sqlite:///{tmp}/mlflow.db", "7", 0.5,
            tmp / "worker.log", **options)
        try:
            process.start()
            if not process.wait_ready(180):  # a ceiling for a wedged start, not a budget
                raise RuntimeError("worker did not start:\n" + read_log(tmp / "worker.log"))
            yield process
        finally:
            with suppress(Exception):
                process.stop(grace_s=5)


def read_log(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else "(no log)"

"""Shared parts for the router tests: real MLflow models and a real uvicorn server.

Models are scikit-learn pipelines registered in a temporary SQLite-backed MLflow store
and loaded back with ``mlflow.pyfunc.load_model``, exactly as the router's server does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import requests
import uvicorn
from processes import free_port

MODEL_NAME = "fraud-test"
COLUMNS = ["amount", "velocity", "region", "customer_id"]


def make_frame(n: int, seed: int = 0) -> pd.DataFrame:
    """Transactions with two numeric features, a segment field and a routing column."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "amount": rng.gamma(2.0, 50.0, n).round(2),
        "velocity": rng.poisson(3, n).astype(float),
        "region": rng.choice(["eu", "us", "apac"], n),
        "customer_id": [f"c{int(i)}" for i in rng.integers(0, 10_000, n)],
    })


def _target(frame: pd.DataFrame, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logit = -3 + 0.01 * frame["amount"] + 0.4 * frame["velocity"]
    return (rng.random(len(frame)) < 1 / (1 + np.exp(-logit))).astype(int)


@dataclass(frozen=True)
class Registry:
    """A temporary MLflow store with two registered versions of one model."""

    tracking_uri: str
    baseline_uri: str
    candidate_uri: str


def register_models(tmp: Path) -> Registry:
    """Train two classifiers (probabilities out) and register them as versions 1 and 2.

    Leaves MLflow's tracking URI pointing at the new store; callers restore it.
    """
    import mlflow
    from mlflow.models import infer_signature
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    tracking_uri = f"sqlite:///{tmp}/mlflow.db"
    mlflow.set_tracking_uri(tracking_uri)
    # An explicit artifact location: the default is ./mlruns under the current directory.
    experiment = mlflow.create_experiment("router-tests", artifact_location=f"{tmp}/artifacts")
    frame = make_frame(2000, seed=1)
    y = _target(frame, seed=2)
    for c in (1.0, 0.05):  # registered as versions 1 and 2
        model = Pipeline([
            ("features", ColumnTransformer([
                ("num", "passthrough", ["amount", "velocity"]),
                ("region", OneHotEncoder(handle_unknown="ignore"), ["region"]),
            ])),  # customer_id is dropped: it only routes
            ("clf", LogisticRegression(C=c, max_iter=500)),
        ]).fit(frame, y)
        signature = infer_signature(frame, model.predict_proba(frame))
        with mlflow.start_run(experiment_id=experiment):
            mlflow.sklearn.log_model(
                model, name="model", signature=signature,
                registered_model_name=MODEL_NAME, pyfunc_predict_fn="predict_proba",
                # Explicit requirements: inferring them loads the model in a subprocess.
                pip_requirements=["scikit-learn"],
            )
    return Registry(tracking_uri, f"models:/{MODEL_NAME}/1", f"models:/{MODEL_NAME}/2")


def wait_until_healthy(url: str, timeout: float = 60.0, process: Any = None) -> None:
    """Poll ``url/health`` until it answers 200 (the deadline only bounds a hung start)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            if requests.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not become healthy")


@contextmanager
def running(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free 127.0.0.1 port in a thread; yields the URL and
    always stops the server (lifespan shutdown included)."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    # uvicorn installs no signal handlers outside the main thread, so this is safe.
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)

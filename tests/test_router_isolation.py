"""A candidate that hangs or exits costs the baseline's callers nothing, and is rolled back.

End to end with the real `mlflow deployments` CLI, a real tracking server and the real
router, controller and supervisor: the candidate runs in its own process, so every caller
gets HTTP 200 (the baseline answers what the candidate could not, with
``X-Kpigate-Fallback``), the candidate's failures are logged as its errors, and the gate
rolls it back on the error rate.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow_cli import mlflow_deployments
from sklearn.linear_model import LogisticRegression

from mlflow_kpigate.backends.local.state_store import RolloutStore

COLUMNS = list("abcd")

POLICY = """
evaluation: {interval: 1s, maturity: 0s}
stage_defaults: {min_samples: {requests: 80}, min_dwell: 1s, max_duration: 10m}
stages: [50, 100]
kpis:
  - {name: error_rate, kind: proportion, metric: error_rate, role: critical, margin: 0.05}
"""

MISBEHAVING = '''
import os
import time

import mlflow

MODE = "{mode}"


class Misbehaving(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        if MODE == "exit":
            os._exit(1)
        time.sleep(3)
        return [0.5] * len(model_input)


mlflow.models.set_model(Misbehaving())
'''


@pytest.fixture(scope="module")
def env(mlflow_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("isolation")
    mlflow.set_tracking_uri(mlflow_server.uri)
    rng = np.random.default_rng(0)
    x = pd.DataFrame(rng.normal(size=(500, 4)), columns=COLUMNS)
    y = (x.a > 0).astype(int)
    name = "isolation-model"
    with mlflow.start_run():
        mlflow.sklearn.log_model(LogisticRegression().fit(x, y), name="model",
                                 registered_model_name=name, input_example=x.head(2),
                                 pyfunc_predict_fn="predict_proba")
    for mode in ("sleep", "exit"):  # versions 2 and 3
        code = root / f"{mode}_model.py"
        code.write_text(MISBEHAVING.replace("{mode}", mode))
        with mlflow.start_run():
            mlflow.pyfunc.log_model(name="model", python_model=str(code),
                                    registered_model_name=name)
    mlflow.MlflowClient().set_registered_model_alias(name, "champion", "1")
    (root / "policy.yaml").write_text(POLICY)
    environ = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server.uri,
               "KPIGATE_STATE_DIR": str(root / "state"), "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    yield {"root": root, "name": name, "env": environ}
    from mlflow_kpigate.deploy.local_processes import stop_processes

    for d in (root / "state").glob("*"):
        if (d / "pids.json").exists():
            stop_processes(d)


def _cli(env: Any, *args: str) -> subprocess.CompletedProcess[str]:
    return mlflow_deployments([*args, "-t", "kpigate"], env=env["env"], timeout=300)


def _store(env: Any, name: str) -> RolloutStore:
    return RolloutStore(Path(env["env"]["KPIGATE_STATE_DIR"]) / name)


@pytest.mark.parametrize(("mode", "version"), [("sleep", 2), ("exit", 3)])
def test_a_candidate_that_sleeps_or_exits_is_invisible_to_callers_and_rolled_back(
        env: Any, mode: str, version: int) -> None:
    deployment = f"iso-{mode}"
    r = _cli(env, "create", "--name", deployment, "-m", f"models:/{env['name']}/{version}",
             "-C", f"policy={env['root'] / 'policy.yaml'}", "-C", "candidate_timeout=300ms")
    assert r.returncode == 0, r.stderr
    store = _store(env, deployment)
    url = f"http://127.0.0.1:{store.require().port}"
    rng = np.random.default_rng(1)
    statuses, fallbacks, roles = [], 0, set()
    deadline = time.monotonic() + 240  # bounds a wedged rollout only
    while store.require().phase.value not in ("rolled_back", "aborted"):
        assert time.monotonic() < deadline, store.require().reason
        body = json.dumps({"dataframe_split": {"columns": COLUMNS, "data": [
            rng.normal(size=4).tolist()]}}).encode()
        request = urllib.request.Request(
            f"{url}/invocations", data=body, headers={
                "Content-Type": "application/json",
                "X-Kpigate-Routing-Key": f"user-{rng.integers(10**6)}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            statuses.append(response.status)
            roles.add(response.headers["X-Kpigate-Role"])
            fallbacks += response.headers.get("X-Kpigate-Fallback") == "candidate-error"
            response.read()
    state = store.require()
    assert state.phase.value == "rolled_back", state.reason
    assert "error_rate" in state.reason
    assert set(statuses) == {200}  # no caller saw the candidate fail
    assert roles == {"baseline"}
    assert fallbacks > 0
    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as response:
        text = response.read().decode()
    errors = [line for line in text.splitlines() if line.startswith("kpigate_requests_total")
              and 'role="candidate"' in line and 'outcome="error"' in line]
    assert errors, text[:2000]
    assert _cli(env, "delete", "--name", deployment).returncode == 0

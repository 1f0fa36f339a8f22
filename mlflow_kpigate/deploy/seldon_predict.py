"""Predictions through Seldon's gateway: the URL of a rollout's endpoint, and one call.

``mlflow deployments predict -t kpigate:/seldon/NS`` sends an MLflow payload (a DataFrame,
``dataframe_split`` or ``dataframe_records``) as the Seldon protocol (v1) or the Open
Inference Protocol (v2) and returns MLflow's ``PredictionsResponse``.
"""

from __future__ import annotations

import json
from typing import Any

import requests

from mlflow_kpigate.core.errors import KpigateError, UsageError


def endpoint_url(gateway: str | None, namespace: str, name: str, version: int) -> str | None:
    """The prediction URL of rollout ``name`` behind ``gateway`` (None without one)."""
    if not gateway:
        return None
    if version == 2:
        return f"{gateway}/v2/models/{name}/infer"
    return f"{gateway}/seldon/{namespace}/{name}/api/v1.0/predictions"


def score(endpoint: str, name: str, version: int, inputs: Any) -> Any:
    """Score ``inputs`` at ``endpoint``; the predictions as MLflow returns them."""
    from mlflow.deployments import PredictionsResponse

    columns, rows = _rows(inputs)
    headers = {"Content-Type": "application/json"}
    if version == 2:
        body: dict[str, Any] = {"inputs": [
            {"name": c, "shape": [len(rows)], "datatype": "FP64",
             "data": [r[i] for r in rows]} for i, c in enumerate(columns)]}
        headers["Seldon-Model"] = f"{name}.experiment"
    else:
        body = {"data": {"names": columns, "ndarray": rows}}
    try:
        resp = requests.post(endpoint, data=json.dumps(body, default=float).encode(),
                             headers=headers, timeout=60)
    except requests.RequestException as exc:
        raise KpigateError(f"{name}: the gateway at {endpoint} is not reachable ({exc})"
                           ) from None
    if resp.status_code >= 400:
        raise UsageError(f"{name}: Seldon rejected the input (HTTP {resp.status_code}): "
                         f"{resp.text[:300]}")
    reply = resp.json()
    if "data" in reply:
        data = reply["data"]
        preds = data.get("ndarray", data.get("tensor", {}).get("values"))
    else:
        outputs = [o.get("data") for o in reply.get("outputs", [])]
        preds = outputs[0] if len(outputs) == 1 else outputs
    return PredictionsResponse({"predictions": preds})


def _rows(inputs: Any) -> tuple[list[str], list[list[Any]]]:
    if hasattr(inputs, "to_dict"):
        split = inputs.to_dict(orient="split")
        return [str(c) for c in split["columns"]], split["data"]
    if isinstance(inputs, dict) and "dataframe_split" in inputs:
        split = inputs["dataframe_split"]
        return [str(c) for c in split["columns"]], split["data"]
    if isinstance(inputs, dict) and "dataframe_records" in inputs:
        records = inputs["dataframe_records"]
        columns = list(records[0]) if records else []
        return columns, [[r.get(c) for c in columns] for r in records]
    raise UsageError("predict: give a pandas DataFrame or an MLflow JSON payload "
                     "(dataframe_split or dataframe_records)")

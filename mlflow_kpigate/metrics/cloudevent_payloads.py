"""The payloads of Seldon logger events: input tables and raw outputs (pure: no I/O).

Bodies are the graph node's JSON input/output in Seldon's protocol (``{"data": {"names":
[...], "ndarray": [[...]]}}`` or ``"tensor": {"shape", "values"}``, ``jsonData``,
``strData``/``binData``), the v2 inference protocol (``inputs`` / ``outputs`` of ``{name,
shape, datatype, data}``) or the TensorFlow/MLflow one (``instances`` / ``predictions``,
MLflow's ``dataframe_split`` …, read with :func:`~mlflow_kpigate.core.payloads.parse_payload`).
gRPC/protobuf payloads are not read. Every problem is an :class:`EventError` naming the
field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from mlflow_kpigate.core.payloads import PayloadError, parse_payload
from mlflow_kpigate.metrics.cloudevent_envelope import CloudEvent, EventError

__all__ = ["failure", "json_body", "raw_output", "read_table", "rows_of"]


def json_body(event: CloudEvent) -> dict[str, Any]:
    """The event's payload as a JSON object (REST JSON content types only)."""
    mime = (event.content_type or "application/json").partition(";")[0].strip().lower()
    if mime != "application/json" and not mime.endswith("+json"):
        raise EventError(f"content type {mime!r} is not read (gRPC/protobuf payloads are "
                         "not supported): log REST JSON traffic", event.kind)
    try:
        body = json.loads(event.data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EventError(f"{event.kind} payload is not valid JSON: {exc}", event.kind) from None
    if not isinstance(body, dict):
        raise EventError(f"{event.kind} payload must be a JSON object, got "
                         f"{type(body).__name__}", event.kind)
    return body


def _tensor(tensor: Any, where: str, kind: str) -> np.ndarray:
    if not isinstance(tensor, dict) or not isinstance(tensor.get("values"), list):
        raise EventError(f"{where}: needs 'values' (a list) and 'shape'", kind)
    shape = tensor.get("shape")
    values = np.asarray(tensor["values"])
    if shape is None:
        return values
    if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise EventError(f"{where}.shape: must be a list of non-negative integers", kind)
    if math.prod(shape) != values.size:
        raise EventError(f"{where}: shape {shape} does not hold {values.size} values", kind)
    return values.reshape(shape)


def _seldon_table(data: Any, kind: str) -> pd.DataFrame:
    if not isinstance(data, dict):
        raise EventError("data: must be an object with ndarray or tensor", kind)
    names = data.get("names")
    if names is not None and not (isinstance(names, list)
                                  and all(isinstance(n, str) for n in names)):
        raise EventError("data.names: must be a list of strings", kind)
    if "ndarray" in data:
        rows = data["ndarray"]
        if not isinstance(rows, list) or not rows:
            raise EventError("data.ndarray: must be a non-empty list", kind)
        if not all(isinstance(r, list) for r in rows):
            rows = [rows]  # one sample given as a flat list of its features
    elif "tensor" in data:
        array = _tensor(data["tensor"], "data.tensor", kind)
        if array.ndim == 1:
            array = array.reshape(1, -1)
        if array.ndim != 2:
            raise EventError(f"data.tensor: a request of {array.ndim} dimensions has no rows "
                             "and columns", kind)
        rows = array.tolist()
    else:
        raise EventError("data: needs 'ndarray' or 'tensor' (tftensor is not read)", kind)
    widths = {len(r) for r in rows}
    if len(widths) != 1:
        raise EventError(f"data.ndarray: rows have different lengths {sorted(widths)}", kind)
    width = widths.pop()
    if names is not None and len(names) != width:
        raise EventError(f"data.names: {len(names)} names for rows of {width} values", kind)
    return pd.DataFrame(rows, columns=names if names else None)


def _v2_inputs(inputs: list[Any], kind: str) -> pd.DataFrame:
    columns: dict[str, list[Any]] = {}
    arrays = []
    for i, item in enumerate(inputs):
        where = f"inputs[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise EventError(f"{where}: needs 'name', 'shape', 'datatype' and 'data'", kind)
        array = _tensor({"values": _flat(item.get("data"), where, kind),
                         "shape": item.get("shape")}, where, kind)
        arrays.append((item["name"], array))
    if len(arrays) == 1 and arrays[0][1].ndim == 2 and arrays[0][1].shape[1] != 1:
        return pd.DataFrame(arrays[0][1].tolist())  # one tensor of unnamed feature columns
    lengths = set()
    for name, array in arrays:
        if array.ndim == 2 and array.shape[1] == 1:
            array = array[:, 0]
        if array.ndim != 1:
            raise EventError(f"input {name!r}: shape {list(array.shape)} is not one column; "
                             "send named 1-D inputs (the pandas codec) or one [rows, "
                             "columns] tensor", kind)
        columns[name] = array.tolist()
        lengths.add(array.shape[0])
    if len(lengths) != 1:
        raise EventError(f"inputs: columns have different lengths {sorted(lengths)}", kind)
    return pd.DataFrame(columns)


def _flat(data: Any, where: str, kind: str) -> list[Any]:
    if not isinstance(data, list):
        raise EventError(f"{where}.data: must be a list", kind)
    # v2 allows nested lists in row-major order; flatten them.
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def _is_v2(value: Any) -> bool:
    return (isinstance(value, list) and bool(value) and all(
        isinstance(x, dict) and "name" in x and "data" in x and ("datatype" in x or "shape" in x)
        for x in value))


def _mlflow_table(body: Mapping[str, Any], kind: str) -> pd.DataFrame:
    try:
        return parse_payload(json.dumps(body).encode(), "application/json").frame
    except PayloadError as exc:
        raise EventError(f"request payload: {exc}", kind) from None


def read_table(event: CloudEvent) -> pd.DataFrame:
    """The input rows of a request event as a DataFrame (named columns where the payload
    names them); ``EventError`` if the payload has no readable rows."""
    body = json_body(event)
    kind = event.kind
    if "data" in body:
        frame = _seldon_table(body["data"], kind)
    elif "jsonData" in body:
        payload = body["jsonData"]
        if isinstance(payload, list) and payload and all(isinstance(r, dict) for r in payload):
            frame = pd.DataFrame(payload)
        elif isinstance(payload, dict):
            frame = _mlflow_table(payload, kind)
        else:
            raise EventError("jsonData: must be a list of records or an MLflow payload such "
                             "as {\"dataframe_split\": ...}", kind)
    elif "strData" in body or "binData" in body:
        frame = pd.DataFrame(index=range(1))  # one opaque sample: no columns to read
    elif _is_v2(body.get("inputs")):
        frame = _v2_inputs(body["inputs"], kind)
    else:
        frame = _mlflow_table({k: v for k, v in body.items() if k != "meta"}, kind)
    if len(frame) == 0:
        raise EventError("request payload has no rows", kind)
    return frame


def _choose_output(outputs: list[Any], kind: str) -> np.ndarray:
    chosen = outputs[0]
    if len(outputs) > 1:
        # A classifier exposing labels and probabilities: the probabilities carry the score.
        chosen = next((o for o in outputs if "prob" in str(o.get("name", "")).lower()),
                      outputs[0])
    return _tensor({"values": _flat(chosen.get("data"), "outputs[].data", kind),
                    "shape": chosen.get("shape")}, f"output {chosen.get('name')!r}", kind)


def failure(body: Mapping[str, Any]) -> str | None:
    """The one-line reason of a response reporting Seldon's ``status: FAILURE``, else None."""
    status = body.get("status")
    if isinstance(status, dict) and str(status.get("status", "")).upper() == "FAILURE":
        info = status.get("info") or status.get("reason") or "model reported FAILURE"
        return str(info).splitlines()[0][:300] if str(info).strip() else "FAILURE"
    return None


def raw_output(body: Mapping[str, Any], kind: str) -> Any:
    """The model output in a response body, for
    :func:`~mlflow_kpigate.core.payloads.interpret_output` (``None`` for an opaque
    ``strData``/``binData`` answer)."""
    if "data" in body:
        data = body["data"]
        if not isinstance(data, dict):
            raise EventError("data: must be an object with ndarray or tensor", kind)
        if "ndarray" in data:
            return data["ndarray"]
        if "tensor" in data:
            return _tensor(data["tensor"], "data.tensor", kind)
        raise EventError("data: needs 'ndarray' or 'tensor' (tftensor is not read)", kind)
    if _is_v2(body.get("outputs")):
        return _choose_output(body["outputs"], kind)
    if "predictions" in body:
        raw = body["predictions"]
        if isinstance(raw, list) and raw and all(isinstance(r, dict) for r in raw):
            return pd.DataFrame(raw)
        if isinstance(raw, dict):
            return pd.DataFrame(raw)
        return raw
    if "jsonData" in body:
        payload = body["jsonData"]
        if isinstance(payload, dict) and "predictions" in payload:
            return raw_output(payload, kind)
        return payload
    if "strData" in body or "binData" in body:
        return None
    raise EventError("response payload: needs 'data' (Seldon), 'outputs' (v2) or "
                     "'predictions'", kind)


def rows_of(raw: Any) -> int:
    """How many rows a raw output answers (1 for an opaque or scalar one)."""
    if raw is None:
        return 1
    if isinstance(raw, pd.DataFrame):
        return len(raw)
    try:
        array = np.asarray(raw, dtype=object)
    except Exception:  # ragged or exotic outputs: one opaque answer
        return 1
    return int(array.shape[0]) if array.ndim >= 1 else 1

"""MLflow ``/invocations`` payloads in, ``{"predictions": ...}`` out, and model output → KPIs.

The router accepts what ``mlflow models serve`` accepts: a JSON object with exactly one
of ``dataframe_split``, ``dataframe_records``, ``instances`` or ``inputs`` (plus optional
``params``), or a CSV table (``text/csv``). Parsing reuses MLflow's own converters (with
the model's input schema for type casting), so a payload means the same thing here as
behind MLflow's scoring server (all-float inputs take an equivalent fast path,
:mod:`.payloads_numeric`). Unlike MLflow, everything becomes a pandas DataFrame,
because the router reads routing keys and segment values from input columns: tensor
payloads (``instances``/``inputs`` lists of rows) are read as rows of the schema's
columns when the model has named inputs. Problems raise :class:`PayloadError` with one
line naming what is wrong.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from io import StringIO
from typing import Any

import numpy as np
import orjson
import pandas as pd

from mlflow_kpigate.core.errors import PayloadError
from mlflow_kpigate.core.payloads_numeric import float_schema, numeric_frame

__all__ = [
    "FORMATS",
    "ModelOutput",
    "ParsedPayload",
    "PayloadError",
    "format_predictions",
    "interpret_output",
    "parse_payload",
]

CONTENT_TYPE_JSON = "application/json"
CONTENT_TYPE_CSV = "text/csv"
#: The JSON input formats of MLflow's scoring protocol.
FORMATS: tuple[str, ...] = ("dataframe_split", "dataframe_records", "instances", "inputs")


@dataclass(frozen=True)
class ParsedPayload:
    """A parsed request: the input rows and MLflow inference ``params`` (if any)."""

    frame: pd.DataFrame
    params: dict[str, Any] | None = None


def _one_line(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    line = str(text).strip().splitlines()[0] if str(text).strip() else type(exc).__name__
    return line if len(line) <= 300 else line[:297] + "..."


def _schema_names(schema: Any) -> list[str] | None:
    """Input column names of an MLflow schema, or ``None`` if it has none."""
    if schema is None:
        return None
    try:
        if hasattr(schema, "has_input_names") and not schema.has_input_names():
            return None
        names = list(schema.input_names())
    except Exception:  # any schema we cannot read simply gives no names
        return None
    return names or None


def parse_payload(body: bytes, content_type: str | None, schema: Any = None) -> ParsedPayload:
    """Parse an ``/invocations`` body into a DataFrame (``PayloadError`` if malformed).

    ``content_type`` defaults to JSON when absent; ``schema`` is the model's MLflow input
    schema (``model.metadata.get_input_schema()``), used to cast types and to name the
    columns of list-of-rows payloads.
    """
    mime, _, rest = (content_type or CONTENT_TYPE_JSON).partition(";")
    mime = mime.strip().lower()
    for parameter in filter(None, (p.strip() for p in rest.split(";"))):
        key, _, value = parameter.partition("=")
        if key.strip().lower() != "charset":
            raise PayloadError(f"unsupported content-type parameter {key.strip()!r}", 415)
        if value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise PayloadError(f"only UTF-8 bodies are supported, got charset={value}", 415)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError(f"body is not valid UTF-8: {exc}") from None
    if mime == CONTENT_TYPE_CSV:
        frame, params = _parse_csv(text, schema), None
    elif mime == CONTENT_TYPE_JSON:
        frame, params = _parse_json(text, schema)
    else:
        raise PayloadError(
            f"unsupported content type {mime!r}: send {CONTENT_TYPE_JSON} or {CONTENT_TYPE_CSV}",
            415,
        )
    if len(frame) == 0:
        raise PayloadError("payload has no rows")
    return ParsedPayload(frame, params)


def _parse_csv(text: str, schema: Any) -> pd.DataFrame:
    from mlflow.pyfunc.scoring_server import parse_csv_input

    if not text.strip():
        raise PayloadError("text/csv body is empty")
    try:
        return parse_csv_input(StringIO(text), schema=schema)
    except Exception as exc:  # MLflow raises several types for bad CSV
        raise PayloadError(f"text/csv body is not a CSV table: {_one_line(exc)}") from None


_PLANS: dict[int, tuple[Any, tuple[list[str], Any] | None]] = {}


def _fast_plan(schema: Any) -> tuple[list[str], Any] | None:
    """:func:`float_schema` of ``schema``, computed once per schema object."""
    if schema is None:
        return None
    cached = _PLANS.get(id(schema))
    if cached is not None and cached[0] is schema:
        return cached[1]
    plan = float_schema(schema)
    if len(_PLANS) > 64:  # one router holds two schemas; never grow without bound
        _PLANS.clear()
    _PLANS[id(schema)] = (schema, plan)
    return plan


def _parse_json(text: str, schema: Any) -> tuple[pd.DataFrame, dict[str, Any] | None]:
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        # orjson is strict where Python's json (and so MLflow's server) is not: NaN and
        # Infinity literals, integers beyond 64 bits. Those bodies take the slow path.
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PayloadError(f"body is not valid JSON: {exc}") from None
        except RecursionError:
            raise PayloadError("body is nested too deeply to be a model input") from None
    if not isinstance(data, dict):
        raise PayloadError(
            f"JSON body must be an object with one of {list(FORMATS)}, "
            f"got {type(data).__name__}"
        )
    keys = [k for k in data if k in FORMATS]
    unknown = [k for k in data if k not in FORMATS and k != "params"]
    if unknown:
        raise PayloadError(f"unknown field {unknown[0]!r}: expected one of {list(FORMATS)} "
                           "and optionally 'params'")
    if len(keys) != 1:
        raise PayloadError(
            f"JSON body must have exactly one of {list(FORMATS)}, got {keys or 'none'}"
        )
    params = data.get("params")
    if params is not None and not isinstance(params, dict):
        raise PayloadError(f"'params' must be an object, got {type(params).__name__}")
    fmt = keys[0]
    plan = _fast_plan(schema)
    fast = numeric_frame(fmt, data[fmt], plan) if plan is not None else None
    if fast is not None:
        return fast, params
    try:
        frame = _to_frame(fmt, data[fmt], schema)
    except PayloadError:
        raise
    except RecursionError:
        raise PayloadError(f"{fmt} is nested too deeply to be a model input") from None
    except Exception as exc:  # MLflow's converters raise several types
        raise PayloadError(f"{fmt}: {_one_line(exc)}") from None
    return frame, params


def _to_frame(fmt: str, value: Any, schema: Any) -> pd.DataFrame:
    from mlflow.utils.proto_json_utils import dataframe_from_parsed_json, parse_tf_serving_input

    if fmt == "dataframe_split":
        return dataframe_from_parsed_json(value, pandas_orient="split", schema=schema)
    if fmt == "dataframe_records":
        return dataframe_from_parsed_json(value, pandas_orient="records", schema=schema)
    # instances / inputs: rows as objects, columns as lists, or rows as lists.
    if isinstance(value, list) and value and all(isinstance(r, dict) for r in value):
        return dataframe_from_parsed_json(value, pandas_orient="records", schema=schema)
    if isinstance(value, dict):
        if not value:
            raise PayloadError(f"{fmt} is an empty object")
        columns = list(value)
        cells = [value[c] if isinstance(value[c], list) else [value[c]] for c in columns]
        lengths = {len(c) for c in cells}
        if len(lengths) != 1:
            raise PayloadError(f"{fmt}: columns have different lengths {sorted(lengths)}")
        rows = [list(r) for r in zip(*cells, strict=True)]
        return dataframe_from_parsed_json(
            {"columns": columns, "data": rows}, pandas_orient="split", schema=schema
        )
    names = _schema_names(schema)
    if (
        names
        and isinstance(value, list)
        and value
        and all(isinstance(r, list) and len(r) == len(names) for r in value)
    ):
        # Built from the JSON rows, not a numpy array, so mixed-type rows keep their types.
        return dataframe_from_parsed_json(
            {"columns": names, "data": value}, pandas_orient="split", schema=schema
        )
    if not isinstance(value, list) or not value:
        raise PayloadError(f"{fmt} must be a non-empty list of rows or an object of columns")
    array = np.asarray(parse_tf_serving_input({fmt: value}, schema=schema))
    if array.ndim == 1:
        name = names[0] if names and len(names) == 1 else 0
        return pd.DataFrame({name: array})
    if array.ndim == 2:
        return pd.DataFrame(array)
    raise PayloadError(f"{fmt}: inputs with {array.ndim} dimensions cannot be read as rows")


def format_predictions(raw: Any) -> str:
    """The JSON response body MLflow's scoring server gives: ``{"predictions": ...}``."""
    from mlflow.pyfunc.scoring_server import predictions_to_json

    out = StringIO()
    predictions_to_json(raw, out)
    return out.getvalue()


@dataclass(frozen=True)
class ModelOutput:
    """Per-row score (probability of class 1) and 0/1 prediction; ``None`` where unknown."""

    scores: list[float | None]
    predicted: list[int | None]
    understood: bool


def interpret_output(raw: Any, n_rows: int, threshold: float = 0.5) -> ModelOutput:
    """Read a binary classifier's output for the KPIs.

    * two columns of probabilities → score = column 1, predicted = score >= threshold;
    * one column (or 1-D) of floats in [0, 1] → the score, predicted by the threshold;
    * one column of 0/1 integers or booleans → the prediction only, no score.

    Anything else (labels as strings, multi-class output, a different number of rows)
    is not understood: every row gets ``None`` and ``understood`` is False.
    """
    unknown = ModelOutput([None] * n_rows, [None] * n_rows, False)
    if isinstance(raw, (pd.DataFrame, pd.Series)):
        raw = raw.to_numpy()
    if isinstance(raw, Mapping):
        return unknown
    try:
        array = np.asarray(raw)
    except Exception:  # arbitrary objects from custom models
        return unknown
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.shape[:1] != (n_rows,) or array.dtype.kind not in "biuf":
        return unknown
    if array.ndim == 2:
        if array.shape[1] != 2 or array.dtype.kind != "f":
            return unknown
        array = array[:, 1]
    elif array.ndim != 1:
        return unknown
    if array.dtype.kind == "b" or (
        array.dtype.kind in "iu" and array.size and array.min() >= 0 and array.max() <= 1
    ):
        return ModelOutput([None] * n_rows, [int(v) for v in array.tolist()], True)
    if array.dtype.kind != "f":
        return unknown
    values = array.astype(np.float64).tolist()
    if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in values):
        return unknown
    return ModelOutput(values, [int(v >= threshold) for v in values], True)

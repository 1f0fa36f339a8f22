"""The all-float fast path of payload parsing gives MLflow's frame, or steps aside."""

from __future__ import annotations

import json
import random

import numpy as np
import pandas as pd
import pytest
from mlflow.models import infer_signature
from mlflow.types import ColSpec, DataType, Schema

from mlflow_kpigate.core import payloads
from mlflow_kpigate.core.payloads import parse_payload
from mlflow_kpigate.core.payloads_numeric import float_schema, numeric_frame

NAMES = [f"f{i}" for i in range(5)]


def _schema(kind: str = "double") -> Schema:
    return Schema([ColSpec(kind, n) for n in NAMES])


def _slow(body: dict, schema: Schema) -> pd.DataFrame:
    fmt = next(k for k in body if k in payloads.FORMATS)
    return payloads._to_frame(fmt, body[fmt], schema)


def _cell(rng: random.Random) -> object:
    return rng.choice([
        rng.uniform(-1e6, 1e6), rng.randint(-10**9, 10**9), None, True, False,
        f"{rng.uniform(-5, 5):.6f}", 0, 1e-300, -0.0,
    ])


def _bodies(rng: random.Random, rows: int) -> list[dict]:
    cols = NAMES[:]
    rng.shuffle(cols)
    data = [[_cell(rng) for _ in cols] for _ in range(rows)]
    return [
        {"dataframe_split": {"columns": cols, "data": data}},
        {"dataframe_records": [dict(zip(cols, r, strict=True)) for r in data]},
        {"instances": [[_cell(rng) for _ in NAMES] for _ in range(rows)]},
        {"inputs": [[_cell(rng) for _ in NAMES] for _ in range(rows)]},
    ]


@pytest.mark.parametrize("kind", ["double", "float"])
def test_fast_frame_equals_mlflows_over_random_payloads(kind: str) -> None:
    schema = _schema(kind)
    plan = float_schema(schema)
    assert plan is not None
    rng = random.Random(7)
    checked = 0
    for _ in range(150):
        for body in _bodies(rng, rng.randint(1, 6)):
            fmt = next(iter(body))
            fast = numeric_frame(fmt, body[fmt], plan)
            assert fast is not None, body
            pd.testing.assert_frame_equal(fast, _slow(body, schema), check_dtype=True)
            checked += 1
    assert checked == 600


@pytest.mark.parametrize("body", [
    {"dataframe_split": {"columns": NAMES[:4], "data": [[1, 2, 3, 4]]}},  # a column missing
    {"dataframe_split": {"columns": [*NAMES, "x"], "data": [[1, 2, 3, 4, 5, 6]]}},  # extra
    {"dataframe_split": {"columns": NAMES, "data": [[1, 2, 3, 4, "abc"]]}},  # not a number
    {"dataframe_split": {"columns": NAMES, "data": [[1, 2, 3, 4, [5]]]}},  # nested
    {"dataframe_split": {"columns": NAMES, "index": [7], "data": [[1, 2, 3, 4, 5]]}},
    {"dataframe_records": [dict(zip(NAMES, [1, 2, 3, 4, 5], strict=True)),
                           dict(zip(reversed(NAMES), [1, 2, 3, 4, 5], strict=True))]},
    {"instances": [[1, 2, 3]]},
    {"instances": {"f0": [1.0]}},
])
def test_anything_else_takes_mlflows_path(body: dict) -> None:
    fmt = next(iter(body))
    plan = float_schema(_schema())
    assert plan is not None
    assert numeric_frame(fmt, body[fmt], plan) is None


def test_only_required_single_float_type_column_schemas_qualify() -> None:
    assert float_schema(None) is None
    assert float_schema(Schema([ColSpec("double", "a"), ColSpec("long", "b")])) is None
    assert float_schema(Schema([ColSpec("string", "a")])) is None
    assert float_schema(Schema([ColSpec("double", "a"), ColSpec("double", "b",
                                                                required=False)])) is None
    assert float_schema(Schema([ColSpec(DataType.float, "a")])) == (["a"], np.float32)
    frame = pd.DataFrame({"a": [1.0], "b": [2.0]})
    tensor = infer_signature(frame.to_numpy()).inputs
    assert float_schema(tensor) is None


def test_parse_payload_uses_it_and_keeps_mlflows_messages() -> None:
    schema = _schema()
    body = json.dumps({"dataframe_split": {"columns": NAMES, "data": [[1, 2, 3, 4, 5]]}})
    parsed = parse_payload(body.encode(), "application/json", schema)
    assert parsed.frame.to_numpy().tolist() == [[1.0, 2.0, 3.0, 4.0, 5.0]]
    # NaN literals are not JSON to orjson but are to MLflow's server: still accepted.
    nan = parse_payload(b'{"instances": [[NaN, 1, 2, 3, 4]]}', "application/json", schema)
    assert np.isnan(nan.frame.iloc[0, 0])
    with pytest.raises(payloads.PayloadError, match=r"^body is not valid JSON"):
        parse_payload(b"{nope", "application/json", schema)

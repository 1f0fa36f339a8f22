"""The label join: late labels (and their business values) onto logged predictions.

A label applies to every row of its request id (the served row and, in shadow, the
candidate's copy; rows logged after it get it on insert, see
:mod:`mlflow_kpigate.metrics.collector_rows`). **The first label wins**: a label for an id
that is already labelled is counted as a duplicate and ignored, so a client that retries a
feedback call (at-least-once delivery) cannot double-count or flip an outcome; corrections
are not supported. Labels for ids with no logged prediction are not stored, only counted
(``meta.unknown_labels``, across processes).
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Mapping, Sequence
from typing import Any

from mlflow_kpigate.core.records import ROLES, Label, LabelOutcome, LabelResult
from mlflow_kpigate.core.records import is_number as _is_number
from mlflow_kpigate.metrics.collector_db import transaction
from mlflow_kpigate.metrics.collector_schema import OUTCOME

__all__ = ["CheckedLabel", "check_labels", "join_labels"]

#: A validated label: request id, 0/1 label, and the value of each value column in order.
CheckedLabel = tuple[str, int, list[float | None]]


def _binary(value: Any) -> int | None:
    """``value`` as 0/1, or ``None`` if it is not a 0/1 number or bool."""
    if isinstance(value, bool):
        return int(value)
    if _is_number(value) and value in (0, 1):
        return int(value)
    return None


def check_labels(labels: Sequence[Label], value_cols: Mapping[str, str]) -> list[CheckedLabel]:
    """Every label validated (``ValueError`` naming the field: ``labels[i].label`` in a
    batch, ``label`` for a single one), with the business values the policy needs
    (``value_cols``' names) in column order."""
    checked = []
    for i, item in enumerate(labels):
        where = f"labels[{i}]." if len(labels) > 1 else ""
        if not isinstance(item, Label):
            raise ValueError(f"{where or 'the label'} must be a Label, not "
                             f"{type(item).__name__}")
        if not isinstance(item.request_id, str) or not item.request_id:
            raise ValueError(f"{where}request_id must be a non-empty string, "
                             f"got {item.request_id!r}")
        label = _binary(item.label)
        if label is None:
            raise ValueError(f"{where}label must be 0 or 1, got {item.label!r}")
        values: list[float | None] = []
        given = item.values or {}
        if not isinstance(given, Mapping):
            raise ValueError(f"{where}values must be a mapping of name to number")
        for name in value_cols:
            if name not in given:
                example = ", ".join(f'"{n}": 12.5' for n in value_cols)
                raise ValueError(
                    f"{where}values is missing {name!r}: the policy's business KPIs need "
                    f"{', '.join(map(repr, value_cols))} with every label, e.g. "
                    f'{{"request_id": "{item.request_id}", "label": {label}, '
                    f'"values": {{{example}}}}}'
                )
            value = given[name]
            if not _is_number(value) or not math.isfinite(value):
                raise ValueError(f"{where}values[{name!r}] must be a finite number, "
                                 f"got {value!r}")
            values.append(float(value))
        checked.append((item.request_id, label, values))
    return checked


def join_labels(
    conn: sqlite3.Connection, value_cols: Mapping[str, str], checked: Sequence[CheckedLabel]
) -> LabelResult:
    """Write ``checked`` labels onto their rows in one transaction."""
    now = time.time()
    sets = ", ".join(["label = ?", "labelled_at = ?",
                      *(f"{c} = ?" for c in value_cols.values())])
    matched, duplicates = 0, 0
    unknown: list[str] = []
    outcomes: list[LabelOutcome] = []
    with transaction(conn):
        for request_id, label, values in checked:
            rows = conn.execute(
                "SELECT role, version, shadow, predicted, label FROM predictions "
                "WHERE request_id = ?", (request_id,)
            ).fetchall()
            if not rows:
                unknown.append(request_id)
                continue
            if any(row[4] is not None for row in rows):
                duplicates += 1
                continue
            conn.execute(f"UPDATE predictions SET {sets} WHERE request_id = ?",
                         (label, now, *values, request_id))
            matched += 1
            for role, version, shadow, predicted, _ in rows:
                if predicted is not None:
                    outcomes.append(LabelOutcome(
                        ROLES[role], version, bool(shadow), OUTCOME[(label, predicted)]
                    ))
        if unknown:
            conn.execute(
                "UPDATE meta SET value = CAST(value AS INTEGER) + ? "
                "WHERE key = 'unknown_labels'", (len(unknown),)
            )
    return LabelResult(matched, tuple(unknown), duplicates, tuple(outcomes))

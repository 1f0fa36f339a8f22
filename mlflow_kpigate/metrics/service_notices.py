"""Stage notices: the controller's word on which stage new predictions belong to.

The controller posts ``{"deployment", "stage_index", "shadow", "candidate_percent",
"revision"}`` to ``/admin/stage`` whenever it changes stage; the notice is stored in the
``ce_stage`` table of the collector's file, and a notice with a lower revision than the
stored one is ignored, so a delayed retry cannot move the stage back.

**Stage attribution.** A prediction belongs to the stage of the last notice when its
first half arrived (stage 0, not shadow, before any notice); candidate rows of a shadow
stage are shadow rows. The notice is read inside the ingesting transaction
(:mod:`mlflow_kpigate.metrics.service_join`), so every event is attributed consistently
with the order in which notices were committed.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

__all__ = [
    "StageNotice",
    "apply_stage_notice",
    "create_stage_table",
    "parse_stage_notice",
    "read_stage",
]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ce_stage (
    deployment TEXT PRIMARY KEY,
    stage_index INTEGER NOT NULL,
    shadow INTEGER NOT NULL,
    candidate_percent REAL NOT NULL,
    revision INTEGER NOT NULL,
    updated_at REAL NOT NULL
)
"""


@dataclass(frozen=True)
class StageNotice:
    """The controller's word on which stage new predictions belong to."""

    deployment: str
    stage_index: int
    shadow: bool
    candidate_percent: float
    revision: int
    updated_at: float = 0.0


_NOTICE_FIELDS = ("deployment", "stage_index", "shadow", "candidate_percent", "revision")


def parse_stage_notice(data: Any, deployment: str, now: float) -> StageNotice:
    """A ``POST /admin/stage`` body as a :class:`StageNotice` (``ValueError`` naming the
    field and the fix)."""
    if not isinstance(data, dict):
        raise ValueError(f"body: must be a JSON object with {', '.join(_NOTICE_FIELDS)}")
    extra = sorted(set(data) - set(_NOTICE_FIELDS))
    if extra:
        raise ValueError(f"{extra[0]}: unknown field; expected {', '.join(_NOTICE_FIELDS)}")
    missing = [k for k in _NOTICE_FIELDS if k not in data]
    if missing:
        raise ValueError(f"{missing[0]}: missing; a stage notice needs "
                         f"{', '.join(_NOTICE_FIELDS)}")
    if data["deployment"] != deployment:
        raise ValueError(f"deployment: this collector serves {deployment!r}, not "
                         f"{data['deployment']!r}; send the notice to that deployment's "
                         "collector")
    for key in ("stage_index", "revision"):
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{key}: must be an integer >= 0, got {value!r}")
    if not isinstance(data["shadow"], bool):
        raise ValueError(f"shadow: must be true or false, got {data['shadow']!r}")
    percent = data["candidate_percent"]
    if (isinstance(percent, bool) or not isinstance(percent, (int, float))
            or not 0 <= percent <= 100):
        raise ValueError(f"candidate_percent: must be a number from 0 to 100, got {percent!r}")
    return StageNotice(deployment, data["stage_index"], data["shadow"], float(percent),
                       data["revision"], now)


def create_stage_table(conn: sqlite3.Connection) -> None:
    """Create the ``ce_stage`` table if it is missing."""
    conn.execute(_SCHEMA)


def read_stage(conn: sqlite3.Connection, deployment: str) -> StageNotice:
    """The stored notice of ``deployment`` (stage 0, not shadow, revision -1 before any)."""
    row = conn.execute(
        "SELECT stage_index, shadow, candidate_percent, revision, updated_at FROM ce_stage "
        "WHERE deployment = ?", (deployment,)).fetchone()
    if row is None:
        return StageNotice(deployment, 0, False, 0.0, -1, 0.0)
    return StageNotice(deployment, int(row[0]), bool(row[1]), float(row[2]),
                       int(row[3]), float(row[4]))


def apply_stage_notice(conn: sqlite3.Connection, notice: StageNotice) -> tuple[bool, StageNotice]:
    """Store ``notice`` unless its revision is older than the stored one.

    Returns whether it was ignored, and the notice now in force.
    """
    current = read_stage(conn, notice.deployment)
    if notice.revision < current.revision:
        return True, current
    conn.execute("INSERT OR REPLACE INTO ce_stage VALUES (?, ?, ?, ?, ?, ?)",
                 (notice.deployment, notice.stage_index, int(notice.shadow),
                  notice.candidate_percent, notice.revision, notice.updated_at))
    return False, notice

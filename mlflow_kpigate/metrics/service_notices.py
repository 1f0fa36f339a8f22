"""Stage notices: the controller's word on which stage new predictions belong to.

The controller posts ``{"deployment", "stage_index", "shadow", "candidate_percent",
"revision"}`` to ``/admin/stage`` whenever it changes stage; the notice is stored in the
``ce_stage`` table of the collector's file, and a notice with a lower revision than the
stored one is ignored, so a delayed retry cannot move the stage back.

**Checked against the policy.** Only the controller (the ``operator`` token) can post a
notice, but a notice is also checked against what the rollout's policy allows before it
is stored (:func:`check_against_policy`, :func:`check_revision`): its stage must be one of
the policy's, its traffic one that stage (or a rollback) can have, and its revision not
implausibly far ahead of the last one accepted. A notice that passed the token check but
not these is refused (400) and changes nothing, so one bad notice cannot pin the stage.

**Stage attribution.** A prediction belongs to the stage of the last notice when its
first half arrived (stage 0, not shadow, before any notice); candidate rows of a shadow
stage are shadow rows. The notice is read inside the ingesting transaction
(:mod:`mlflow_kpigate.metrics.service_join`), so every event is attributed consistently
with the order in which notices were committed.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mlflow_kpigate.policy import Stage

__all__ = [
    "MAX_REVISION_LEAD",
    "NoticeRefused",
    "StageNotice",
    "apply_stage_notice",
    "check_against_policy",
    "check_revision",
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


#: How far a notice's revision may lead the last accepted one, plus one per second since
#: that notice was stored. The controller bumps the revision once per saved state (an
#: evaluation, its effects, a readiness change: a handful per evaluation) and posts a
#: notice with every evaluation, so consecutive notices are a few revisions apart. Only
#: notices that failed for a long time (the collector down while the rollout went on)
#: leave a larger gap: 1000 covers hundreds of missed evaluations, and the allowance
#: growing by one a second (faster than any controller saves) lets a collector that was
#: down, or started afresh mid-rollout, take the controller's word again after a while
#: instead of refusing it for good. A forged revision such as 10**12 would need some
#: 30,000 years: it is refused, so it cannot make every genuine notice after it "stale".
MAX_REVISION_LEAD = 1000
_PERCENT_TOLERANCE = 1e-6


class NoticeRefused(ValueError):
    """A well-formed stage notice that the rollout's policy or history rules out."""


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


def _routes(stage: Stage) -> list[tuple[bool, float]]:
    """The ``(shadow, candidate_percent)`` pairs a notice of ``stage`` may carry: the
    stage's own traffic (a shadow stage mirrors with 0 % live; the final stage, also while
    baking, is 100 %) or the candidate detached after a rollback or abort (0 %)."""
    own = (True, 0.0) if stage.shadow else (False, float(stage.traffic))
    return [own, (False, 0.0)]


def check_against_policy(notice: StageNotice, stages: Sequence[Stage]) -> None:
    """``NoticeRefused`` (one line naming the field) unless ``notice`` fits ``stages``."""
    n = len(stages)
    if notice.stage_index >= n:
        raise NoticeRefused(
            f"stage_index: {notice.stage_index} is not a stage of the policy, which has {n} "
            f"(0 to {n - 1}); give the collector the rollout's own policy and stages")
    stage = stages[notice.stage_index]
    routes = _routes(stage)
    if any(notice.shadow == shadow and math.isclose(notice.candidate_percent, percent,
                                                    abs_tol=_PERCENT_TOLERANCE)
           for shadow, percent in routes):
        return
    if notice.shadow and not stage.shadow:
        raise NoticeRefused(f"shadow: stage {notice.stage_index} ({stage.describe()}) is not a "
                            "shadow stage of the policy; send shadow false")
    expected = "0" if stage.shadow else f"{float(stage.traffic):g}, or 0 after a rollback"
    raise NoticeRefused(
        f"candidate_percent: {notice.candidate_percent:g} does not fit stage "
        f"{notice.stage_index} ({stage.describe()}) of the policy; expected {expected}")


def check_revision(notice: StageNotice, current: StageNotice, since: float) -> None:
    """``NoticeRefused`` when ``notice`` leads ``current`` (the stored notice; revision -1
    before any) by more than :data:`MAX_REVISION_LEAD` plus a revision per second since
    ``current`` was stored, or since ``since`` (the collector's start) before any."""
    base = max(current.revision, 0)
    stored_at = current.updated_at if current.revision >= 0 else since
    allowance = MAX_REVISION_LEAD + max(0, math.floor(notice.updated_at - stored_at))
    if notice.revision > base + allowance:
        raise NoticeRefused(
            f"revision: {notice.revision} is implausibly far ahead of the last accepted "
            f"revision {current.revision} (at most {base + allowance} now); post the "
            "rollout's current state revision")


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


def apply_stage_notice(conn: sqlite3.Connection, notice: StageNotice, since: float
                       ) -> tuple[bool, StageNotice]:
    """Store ``notice`` unless its revision is older than the stored one.

    Returns whether it was ignored, and the notice now in force. ``NoticeRefused`` when
    its revision is implausibly far ahead (:func:`check_revision`; ``since`` is when the
    collector started).
    """
    current = read_stage(conn, notice.deployment)
    if notice.revision < current.revision:
        return True, current
    check_revision(notice, current, since)
    conn.execute("INSERT OR REPLACE INTO ce_stage VALUES (?, ?, ?, ?, ?, ?)",
                 (notice.deployment, notice.stage_index, int(notice.shadow),
                  notice.candidate_percent, notice.revision, notice.updated_at))
    return False, notice

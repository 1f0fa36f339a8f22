"""A rollout's history read from its audit events: evaluations, traffic, stage windows.

The one reader of the audit log for everything that looks back at a rollout (the report,
the pull-request comment, ``kpigate replay``, the Prometheus source's stage windows), so
each of them sees the same evaluations in the same order.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace

from mlflow_kpigate.core.evaluation import Evaluation
from mlflow_kpigate.core.events import AuditEvent, Evaluated, Recorded, StageReady

#: Kinds that end a stage's traffic window (the next stage, or the end of the rollout).
STAGE_ENDING = ("promote", "operator_promote", "rollback", "operator_rollback", "aborted",
                "readiness_abort")


@dataclass(frozen=True)
class RecordedEvaluation:
    """One evaluation as recorded: when, what it was given and decided, the traffic after."""

    ts: float
    evaluation: Evaluation
    traffic_percent: float


@dataclass(frozen=True)
class StageWindow:
    """When a stage's traffic was served: from ``start`` (the moment it was ready, Unix
    seconds) to ``end`` (``None`` while the stage is still running)."""

    stage_index: int
    start: float
    end: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.stage_index, bool) or not isinstance(self.stage_index, int) \
                or self.stage_index < 0:
            raise ValueError(f"stage_index must be an integer >= 0, got {self.stage_index!r}")
        if not (isinstance(self.start, (int, float)) and math.isfinite(self.start)):
            raise ValueError(f"start must be a finite time in seconds, got {self.start!r}")
        if self.end is not None and not (isinstance(self.end, (int, float))
                                         and math.isfinite(self.end) and self.end >= self.start):
            raise ValueError(f"end must be a finite time >= start ({self.start}), got {self.end!r}")


@dataclass(frozen=True)
class History:
    """The audit events of one rollout, oldest first."""

    events: tuple[Recorded, ...]

    @classmethod
    def of(cls, events: Iterable[Recorded]) -> History:
        """From a store's ``events()``."""
        return cls(tuple(events))

    def evaluations(self) -> list[RecordedEvaluation]:
        """Every gate evaluation, numbered from 1 where the record did not number it."""
        out: list[RecordedEvaluation] = []
        for rec in self.events:
            if isinstance(rec.event, Evaluated):
                ev = rec.event.evaluation
                if ev.number <= 0 or math.isnan(ev.at):
                    ev = replace(ev, number=ev.number if ev.number > 0 else len(out) + 1,
                                 at=rec.ts if math.isnan(ev.at) else ev.at)
                out.append(RecordedEvaluation(rec.ts, ev, rec.event.weights_percent))
        return out

    def traffic(self, *, changes_only: bool = False) -> list[tuple[float, float]]:
        """(time, candidate percent) after every event that set traffic (or each change)."""
        out: list[tuple[float, float]] = []
        for rec in self.events:
            event: AuditEvent = rec.event
            if not event.MOVES_TRAFFIC:
                continue
            percent = float(getattr(event, "weights_percent", 0.0))
            if changes_only and out and out[-1][1] == percent:
                continue
            out.append((rec.ts, percent))
        return out

    def stage_windows(self) -> list[StageWindow]:
        """Each stage's served interval: from ``stage_ready`` to the event that ended it."""
        windows: list[StageWindow] = []
        open_stage: tuple[int, float] | None = None
        for rec in self.events:
            if isinstance(rec.event, StageReady):
                open_stage = (rec.event.stage_index, rec.ts)
            elif rec.kind in STAGE_ENDING and open_stage is not None:
                windows.append(StageWindow(open_stage[0], open_stage[1], rec.ts))
                open_stage = None
        if open_stage is not None:
            windows.append(StageWindow(open_stage[0], open_stage[1], None))
        return windows

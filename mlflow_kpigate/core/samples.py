"""The stage sample: both roles' KPI aggregates in one stage (stratum) of a rollout.

Metrics sources (the embedded collector, Prometheus, the in-memory source) build them; the
gate judges them; an evaluation record keeps them so the decision can be replayed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mlflow_kpigate.kpis import RoleAggregate


@dataclass(frozen=True)
class StageSample:
    """Aggregates of one stage (stratum) for both roles, as a metrics source reports them."""

    stage_index: int
    baseline: RoleAggregate
    candidate: RoleAggregate

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping; :meth:`from_dict` restores an equal sample."""
        return {"stage_index": self.stage_index, "baseline": self.baseline.to_dict(),
                "candidate": self.candidate.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StageSample:
        """Inverse of :meth:`to_dict` (``ValueError`` if malformed)."""
        try:
            return cls(int(data["stage_index"]), RoleAggregate.from_dict(data["baseline"]),
                       RoleAggregate.from_dict(data["candidate"]))
        except KeyError as exc:
            raise ValueError(f"stage sample: missing {exc.args[0]!r}") from None

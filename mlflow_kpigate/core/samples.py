"""The stage sample: both roles' KPI aggregates in one stage (stratum) of a rollout.

Metrics sources (the embedded collector, Prometheus, the in-memory source) build them; the
gate judges them; an evaluation record keeps them so the decision can be replayed.

In a stratum where both roles answered the same requests (a shadow stage, or the bake,
where the previous version scores a shadow copy), a source that can join the two answers
of one request adds their joint outcomes as ``paired``
(:class:`~mlflow_kpigate.kpis.PairedAggregate`); the gate then uses paired variances there.
``paired`` is None for split traffic, and for sources that cannot pair (Prometheus holds no
per-request data). Records written before pairing existed have no ``paired`` key and load
with None.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mlflow_kpigate.kpis import PairedAggregate, RoleAggregate


@dataclass(frozen=True)
class StageSample:
    """Aggregates of one stage (stratum) for both roles, as a metrics source reports them."""

    stage_index: int
    baseline: RoleAggregate
    candidate: RoleAggregate
    paired: PairedAggregate | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping; :meth:`from_dict` restores an equal sample."""
        out = {"stage_index": self.stage_index, "baseline": self.baseline.to_dict(),
               "candidate": self.candidate.to_dict()}
        if self.paired is not None:
            # Only when present, so split-traffic records keep their earlier form.
            out["paired"] = self.paired.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StageSample:
        """Inverse of :meth:`to_dict` (``ValueError`` if malformed)."""
        try:
            paired = data.get("paired")
            return cls(int(data["stage_index"]), RoleAggregate.from_dict(data["baseline"]),
                       RoleAggregate.from_dict(data["candidate"]),
                       None if paired is None else PairedAggregate.from_dict(paired))
        except KeyError as exc:
            raise ValueError(f"stage sample: missing {exc.args[0]!r}") from None

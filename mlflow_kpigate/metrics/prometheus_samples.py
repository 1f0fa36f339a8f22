"""What one evaluation of the Prometheus source reads into: aggregates per stage and role.

Every series reader of :mod:`mlflow_kpigate.metrics.prometheus` adds its part to the same
:class:`Samples`, which turns them into the :class:`~mlflow_kpigate.core.samples.StageSample`
list the gate consumes. A :data:`Span` is one stage's window, clipped to the evaluation's
``now``.
"""

from __future__ import annotations

from mlflow_kpigate.core.records import ROLES
from mlflow_kpigate.core.samples import StageSample
from mlflow_kpigate.kpis import AggregateSpec, LatencyHistogram, RoleAggregate

__all__ = ["Samples", "Span"]

#: ``(stage index, start, end)`` in Unix seconds: when one stage's traffic was served.
Span = tuple[int, float, float]


class Samples:
    """The aggregates of one evaluation, created on first use per (stage, role).

    Each aggregate's latency histogram takes the layout of ``latency_template``.
    """

    def __init__(self, spec: AggregateSpec, latency_template: LatencyHistogram) -> None:
        self.spec, self.template = spec, latency_template
        self.aggregates: dict[tuple[int, str], RoleAggregate] = {}

    def get(self, stage: int, role: str) -> RoleAggregate:
        key = (stage, role)
        if key not in self.aggregates:
            agg = RoleAggregate(self.spec)
            t = self.template
            agg.latency = LatencyHistogram(t.low, t.high, t.growth)
            self.aggregates[key] = agg
        return self.aggregates[key]

    def result(self) -> list[StageSample]:
        """One sample per stage in which either role has data, in stage order."""
        stages = sorted({s for s, _ in self.aggregates})
        out = []
        for stage in stages:
            pair = [self.get(stage, role) for role in ROLES]
            if any(a.requests or a.labelled or (a.values is not None and a.values.n)
                   for a in pair):
                out.append(StageSample(stage, pair[0], pair[1]))
        return out

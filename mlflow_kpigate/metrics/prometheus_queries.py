"""Custom PromQL KPIs (``metrics.queries``), read per stage window from Prometheus.

Each query of the policy gives, per role and stage, a unit count, a sum and (except for
proportions) a sum of squares; :class:`QueryKpis` turns them into the co-moments of the
KPI's logged values. The templates' placeholders (``deployment``, ``namespace``, ``role``,
``stage``, ``window``, ``start``, ``end``) are filled by
:func:`~mlflow_kpigate.metrics.promql.render`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mlflow_kpigate.core.records import ROLES
from mlflow_kpigate.kpis import CoMoments
from mlflow_kpigate.metrics import promql
from mlflow_kpigate.metrics.prometheus_samples import Samples, Span
from mlflow_kpigate.metrics.prometheus_session import MetricsUnavailable, Session
from mlflow_kpigate.policy import KpiKind, Policy

__all__ = ["QueryKpis"]


class QueryKpis:
    """The policy's custom queries for one deployment, into ``value_names``' co-moments."""

    def __init__(self, deployment: str, namespace: str, policy: Policy,
                 value_names: Sequence[str]) -> None:
        self.deployment, self.namespace, self.policy = deployment, namespace, policy
        self.queries = policy.metrics.queries
        self.value_names = tuple(value_names)

    def read(self, session: Session, windows: Sequence[Span], samples: Samples) -> None:
        """Add each role's co-moments for every window that lasted at least a second."""
        for stage, start, end in windows:
            if end - start >= 1:
                self._read_window(session, stage, start, end, samples)

    @staticmethod
    def _scalar(session: Session, query: str, at: float) -> float:
        result = session.vector(query, at)
        if not result:
            raise session.missing(query, "returned no data; check the metric and label names "
                                  "(append 'or vector(0)' if no data means zero)")
        if len(result) > 1:
            raise MetricsUnavailable(f"{query}: returned {len(result)} series, expected one "
                                     "number; wrap it in sum(...)", kind="malformed",
                                     query=query, attempts=session.attempts)
        return result[0][1]

    def _read_window(self, session: Session, stage: int, start: float, end: float,
                     samples: Samples) -> None:
        names = self.value_names
        index = {name: i for i, name in enumerate(names)}
        for role in ROLES:
            values = {"deployment": self.deployment, "namespace": self.namespace,
                      "role": role, "stage": str(stage), "window": promql.duration(end - start),
                      "start": f"{start:.3f}", "end": f"{end:.3f}"}
            # All queries count the same units (validated with the policy).
            n = round(self._scalar(session, promql.render(self.queries[0].count, values), end))
            if n <= 0:
                continue
            mean = np.zeros(len(names))
            comoment = np.zeros((len(names), len(names)))
            for q in self.queries:
                kpi = self.policy.kpi(q.kpi)
                total = self._scalar(session, promql.render(q.sum, values), end)
                if kpi.kind is KpiKind.PROPORTION:
                    num, unit = index[kpi.numerator or ""], index[kpi.denominator or ""]
                    mean[num], mean[unit] = total / n, 1.0
                    # Events per unit are 0/1, so the sum of squares equals the sum. The
                    # proportion's own estimator uses only the totals.
                    comoment[num, num] = max(total - total * total / n, 0.0)
                    continue
                name = index[(kpi.source if kpi.kind is KpiKind.MEAN else kpi.numerator) or ""]
                rendered = promql.render(q.sum_squares or "", values)
                squares = self._scalar(session, rendered, end)
                spread = squares - total * total / n
                if spread < -1e-9 * max(1.0, abs(squares)):
                    raise MetricsUnavailable(
                        f"{rendered}: the sum of squares ({squares:g}) is below sum²/count "
                        f"({total * total / n:g}); the count, sum and sum_squares queries of "
                        f"{q.kpi!r} do not describe the same units", kind="malformed",
                        query=rendered, attempts=session.attempts)
                mean[name], comoment[name, name] = total / n, max(spread, 0.0)
            # Covariances between different queries' values stay 0: no KPI reads them (a
            # business KPI with a value denominator cannot have a query).
            part = CoMoments.from_dict({"names": list(names), "n": n, "mean": mean.tolist(),
                                        "comoment": comoment.tolist()})
            agg = samples.get(stage, role)
            if agg.values is not None:  # always: queries feed the policy's value names
                agg.values.merge(part)

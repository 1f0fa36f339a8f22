"""The traffic a time-to-decision forecast assumes: request rate, label share and label lag.

A rollout's recorded evaluations say how its current stage's stratum grew: at each
evaluation (:class:`Observation`) the candidate's and the baseline's requests and matured
labelled predictions in that stage. :func:`measure_traffic` turns them into a
:class:`Traffic`:

* **request rate** R: the stage's requests over the time it has been served (in a canary
  stage both roles' requests are live requests; in shadow the baseline answers every
  request and the candidate scores a copy);
* **labels** arrive as ``labelled(t) = c · requests(t − L)``: a share c of the requests,
  each after the lag L (the label delay and the policy's ``maturity`` together). Once the
  stratum's labelled count grows, its slope λ gives c = λ / (requests per second counted in
  both roles) and its intercept the lag, L = elapsed − labelled / λ (clamped to
  [maturity, elapsed]). The slope leaves out the first labelled evaluation when there are
  three or more, because labels can trickle in before the bulk arrives.

Until the current stage has two labelled evaluations, the figures come from the latest
earlier stage that had them, else from the ``fallback`` (the registry's label coverage and
the policy's maturity; with no label yet after ``elapsed``, the lag is at least that; with
one labelled count, the lag that count implies at the fallback's label share).
Everything here is pure: the controller keeps the observations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from mlflow_kpigate.core.samples import StageSample
from mlflow_kpigate.policy import Policy


@dataclass(frozen=True)
class Observation:
    """One evaluation's view of its current stage's stratum (both roles' counts)."""

    at: float
    stage_index: int
    elapsed_s: float
    candidate_requests: int
    baseline_requests: int
    candidate_labelled: int
    baseline_labelled: int

    @property
    def requests(self) -> int:
        """Requests counted in both roles."""
        return self.candidate_requests + self.baseline_requests

    @property
    def labelled(self) -> int:
        """Matured labelled predictions counted in both roles."""
        return self.candidate_labelled + self.baseline_labelled

    @classmethod
    def of(cls, at: float, stage_index: int, elapsed_s: float,
           samples: Sequence[StageSample]) -> Observation | None:
        """The observation of an evaluation's samples (None without the stage's stratum)."""
        cur = next((s for s in samples if s.stage_index == stage_index), None)
        if cur is None:
            return None
        return cls(at, stage_index, elapsed_s, cur.candidate.requests, cur.baseline.requests,
                   cur.candidate.labelled, cur.baseline.labelled)


@dataclass(frozen=True)
class Traffic:
    """What the forecast assumes about traffic (see the module docstring)."""

    request_rate: float  # live requests per second reaching the router
    labels_per_request: float  # c: the share of requests whose label reaches the gate
    label_lag_s: float  # L: from a request to its labelled prediction counting
    basis: str  # where the figures come from, for people


def _live_rate(obs: Observation, shadow: bool) -> float:
    """Live requests per second in ``obs``'s stage (shadow: the baseline answers them all)."""
    if obs.elapsed_s <= 0:
        return 0.0
    live = obs.baseline_requests if shadow else obs.requests
    return live / obs.elapsed_s


def _slope(points: Sequence[Observation]) -> float:
    """Least-squares slope of the labelled count over time (per second)."""
    n = len(points)
    mt = sum(p.at for p in points) / n
    ml = sum(p.labelled for p in points) / n
    sxx = sum((p.at - mt) ** 2 for p in points)
    if sxx <= 0:
        return 0.0
    return sum((p.at - mt) * (p.labelled - ml) for p in points) / sxx


def _labels(policy: Policy, stage: Sequence[Observation]) -> tuple[float, float] | None:
    """(c, L) from one stage's observations, or None if its labels have not grown yet."""
    points = [o for o in stage if o.labelled > 0 and o.elapsed_s > 0]
    if len(points) >= 3:
        points = points[1:]
    if len(points) < 2:
        return None
    slope = _slope(points)
    last = points[-1]
    counted = last.requests / last.elapsed_s
    if not (slope > 0 and counted > 0):
        return None
    c = min(slope / counted, 1.0)
    lag = last.elapsed_s - last.labelled / slope
    return c, min(max(lag, policy.evaluation.maturity), last.elapsed_s)


def measure_traffic(policy: Policy, observations: Sequence[Observation], stage_index: int,
                    fallback: Traffic) -> Traffic:
    """The traffic measured in ``stage_index`` (see the module docstring)."""
    current = [o for o in observations if o.stage_index == stage_index]
    stage = policy.stages[stage_index]
    last = current[-1] if current else None
    rate = _live_rate(last, stage.shadow) if last is not None else 0.0
    if last is None or rate <= 0:
        return fallback
    basis = f"measured over {_span(last.elapsed_s)} of {stage.describe()}"
    labels = _labels(policy, current)
    if labels is not None:
        return Traffic(rate, labels[0], labels[1], basis)
    # The latest earlier stage whose labels grew gives c and L until this one's do.
    for index in sorted({o.stage_index for o in observations if o.stage_index < stage_index},
                        reverse=True):
        labels = _labels(policy, [o for o in observations if o.stage_index == index])
        if labels is not None:
            return Traffic(rate, labels[0], labels[1],
                           f"{basis}; labels as in {policy.stages[index].describe()}")
    lag = max(fallback.label_lag_s, policy.evaluation.maturity)
    if last.labelled == 0 and last.requests > 0:
        # No label yet after this long: the lag is at least that (a lower bound).
        lag = max(lag, last.elapsed_s)
        basis += f"; no label yet, label delay at least {_span(lag)}"
    elif last.labelled > 0 and fallback.labels_per_request > 0:
        # One labelled count: labelled = c · requests(elapsed − L) with the fallback's c.
        counted = last.requests / last.elapsed_s
        lag = last.elapsed_s - last.labelled / (fallback.labels_per_request * counted)
        lag = min(max(lag, policy.evaluation.maturity), last.elapsed_s)
    return replace(fallback, request_rate=rate, label_lag_s=lag, basis=basis)


def _span(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"

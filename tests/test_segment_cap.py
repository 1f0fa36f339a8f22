"""The cap on ``kpigate_stage_segment_labelled_total``'s ``value`` label
(metrics/service_exposition.py): the most frequent segment values keep their series, the
rest are summed into ``__other__``, the same values for both roles, deterministically; and
the exposition is read back into the aggregates the gate judges (the Prometheus source's
parser), counts intact.
"""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from mlflow_kpigate.core.samples import StageSample
from mlflow_kpigate.kpis import AggregateSpec, RoleAggregate
from mlflow_kpigate.metrics.exposition import OTHER_SEGMENT, STAGE_SEGMENT_LABELLED
from mlflow_kpigate.metrics.service_exposition import capped_segments, stage_families

SPEC = AggregateSpec(segment_fields=("country",))
#: Labelled predictions per country and role: "de" and "fr" lead, "it" and "es" tie.
COUNTS = {"baseline": {"de": 50, "fr": 30, "it": 5, "es": 5, "pt": 1},
          "candidate": {"de": 40, "fr": 1, "es": 2, "nl": 3}}


def _aggregate(counts: dict[str, int], seed: int) -> RoleAggregate:
    agg = RoleAggregate(SPEC)
    rng = np.random.default_rng(seed)
    countries = [c for c, n in counts.items() for _ in range(n)]
    y = rng.integers(0, 2, len(countries))
    agg.add_labelled(y, rng.integers(0, 2, len(countries)), segments={"country": countries})
    return agg


def _sample() -> StageSample:
    return StageSample(1, _aggregate(COUNTS["baseline"], 0), _aggregate(COUNTS["candidate"], 1))


def _cells(conf) -> int:
    return conf.tp + conf.fp + conf.tn + conf.fn


def test_the_most_frequent_values_keep_their_series_and_the_rest_are_summed():
    sample = _sample()
    capped = capped_segments(sample, "country", 3)
    # de 90, fr 31, es 7 and it 5 (es before it), nl 3, pt 1: the top three, then the rest.
    assert list(capped) == ["de", "es", "fr", OTHER_SEGMENT]
    base, cand = capped[OTHER_SEGMENT]
    assert (_cells(base), _cells(cand)) == (5 + 1, 3)  # it + pt; nl
    assert (_cells(capped["es"][0]), _cells(capped["es"][1])) == (5, 2)
    # Nothing is lost: each role's cells add up to its labelled predictions.
    for index, role in enumerate(("baseline", "candidate")):
        assert sum(_cells(both[index]) for both in capped.values()) == sum(COUNTS[role].values())
    assert capped_segments(_sample(), "country", 3) == capped  # the same data, the same cut


def test_under_the_cap_every_value_keeps_its_series():
    capped = capped_segments(_sample(), "country", 20)
    assert set(capped) == {"de", "fr", "it", "es", "pt", "nl"}


@pytest.mark.parametrize("limit", [1, 2, 6])
def test_the_exposition_has_at_most_the_cap_plus_other_and_reads_back_whole(limit):
    class Families:
        def collect(self):
            return stage_families("fraud", [_sample()], max_segment_values=limit)

    registry = CollectorRegistry()
    registry.register(Families())
    text = generate_latest(registry).decode()
    rows = [s for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == STAGE_SEGMENT_LABELLED]
    values = {s.labels["value"] for s in rows}
    assert len(values - {OTHER_SEGMENT}) == min(limit, 6)
    assert (OTHER_SEGMENT in values) == (limit < 6)
    for role in ("baseline", "candidate"):
        mine = {s.labels["value"] for s in rows if s.labels["role"] == role}
        assert mine == values  # both roles have the same segments
        total = sum(s.value for s in rows if s.labels["role"] == role)
        assert total == sum(COUNTS[role].values())

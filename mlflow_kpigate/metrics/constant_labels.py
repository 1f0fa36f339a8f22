"""A view of a Prometheus registry that adds the same labels to every series it renders.

The embedded deployment's router and controller export their series with
``namespace="local"`` (:data:`LOCAL_LABELS`), the label by which the dashboard and the alert
rules in ``examples/`` tell rollouts apart; on Kubernetes the Prometheus Operator adds the
namespace of the scrape target instead. A series that already has one of the labels keeps
its own value. A scrape target label of the same name wins over the exported one, as
Prometheus does with every conflicting label (``honor_labels: false``: the exported value
moves to ``exported_namespace``), so a Prometheus that scrapes several machines can set
``namespace`` per machine.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector, CollectorRegistry

__all__ = ["LOCAL_LABELS", "ConstantLabels", "with_labels"]

#: The labels of the embedded deployment's series.
LOCAL_LABELS: Mapping[str, str] = {"namespace": "local"}


class ConstantLabels(Collector):
    """Every family of ``source``, each sample with ``labels`` added."""

    def __init__(self, source: CollectorRegistry, labels: Mapping[str, str]) -> None:
        self.source = source
        self.labels = dict(labels)

    def collect(self) -> Iterable[Metric]:
        for family in self.source.collect():
            out = Metric(family.name, family.documentation, family.type, family.unit)
            out.samples = [s._replace(labels={**self.labels, **s.labels})
                           for s in family.samples]
            yield out


def with_labels(source: CollectorRegistry, labels: Mapping[str, str]) -> CollectorRegistry:
    """A registry that renders ``source`` with ``labels`` added to every sample."""
    view = CollectorRegistry(auto_describe=False)
    view.register(ConstantLabels(source, labels))
    return view

"""Writing a rollout's report: the charts first, then ``report.md`` and ``report.html``.

:func:`build_report` turns a rollout's state, its decisions (one per evaluation, with the
time each was made) and its traffic history into the files of :class:`ReportFiles`:

* ``report.md`` and ``report.html``: the sections of :mod:`.document`; the HTML file
  embeds the charts so it can be mailed or attached on its own;
* ``kpi_<name>.png``: each KPI per evaluation (:func:`.charts.kpi_chart`);
* ``control_<name>.png``: the candidate against the registry baseline's μ ± kσ band,
  only for KPIs whose μ and σ are known. ``k`` is ``control_k``, else the policy's
  ``control_limits.k``, else 2 (the case study's value; the chart then says the gate did
  not enforce it);
* ``traffic.png``: the candidate's traffic share over time;
* ``timeline.png``: the decision timeline — stage, traffic, each decision and each KPI's
  interval against its margins over time (:func:`.timeline.timeline_chart`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mlflow_kpigate.core.baseline import RegistryBaseline
from mlflow_kpigate.core.decision import Decision
from mlflow_kpigate.core.state import RolloutState
from mlflow_kpigate.policy import Policy
from mlflow_kpigate.report.blocks import to_html, to_markdown
from mlflow_kpigate.report.charts import control_chart, kpi_chart, traffic_chart
from mlflow_kpigate.report.document import document, registry_kpi
from mlflow_kpigate.report.formats import finite
from mlflow_kpigate.report.kpi_table import evidence_of
from mlflow_kpigate.report.timeline import timeline_chart

#: The σ multiple drawn when neither ``control_k`` nor the policy gives one (case study).
DEFAULT_CONTROL_K = 2.0

_FILE_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True)
class ReportFiles:
    """The files :func:`build_report` wrote."""

    directory: Path
    markdown: Path
    html: Path
    kpi_charts: Mapping[str, Path] = field(default_factory=dict)
    control_charts: Mapping[str, Path] = field(default_factory=dict)
    traffic_chart: Path | None = None
    timeline_chart: Path | None = None

    @property
    def charts(self) -> tuple[Path, ...]:
        """Every PNG chart."""
        extra = tuple(p for p in (self.traffic_chart, self.timeline_chart) if p)
        return (*self.kpi_charts.values(), *self.control_charts.values(), *extra)

    @property
    def paths(self) -> tuple[Path, ...]:
        """Every file written."""
        return (self.markdown, self.html, *self.charts)


def build_report(out_dir: Path, *, state: RolloutState, decisions: Sequence[Decision],
                 timestamps: Sequence[float], weights_history: Sequence[tuple[float, float]],
                 policy: Policy, registry_baseline: RegistryBaseline | None,
                 control_k: float | None) -> ReportFiles:
    """Write the report files into ``out_dir`` (created if missing); return their paths.

    ``timestamps`` holds the time (epoch seconds) of each decision; ``weights_history``
    the (epoch seconds, candidate percent) of every traffic change.
    """
    if len(timestamps) != len(decisions):
        raise ValueError(f"timestamps has {len(timestamps)} entries for {len(decisions)} "
                         "decisions; give one time per decision")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    enforced = policy.control_limits.k is not None
    k = control_k if control_k is not None else (policy.control_limits.k or DEFAULT_CONTROL_K)

    # Charts first: the documents embed or link them.
    kpi_charts: dict[str, Path] = {}
    control_charts: dict[str, Path] = {}
    for kpi in policy.kpis:
        if not any(evidence_of(d, kpi.name) is not None for d in decisions):
            continue
        safe = _FILE_SAFE.sub("_", kpi.name)
        path = out / f"kpi_{safe}.png"
        kpi_chart(path, kpi, decisions)
        kpi_charts[kpi.name] = path
        base = registry_kpi(registry_baseline, kpi)
        if base is not None and finite(base.mean) and base.has_spread:
            path = out / f"control_{safe}.png"
            control_chart(path, kpi, decisions, base, k, enforced)
            control_charts[kpi.name] = path
    traffic = out / "traffic.png"
    traffic_chart(traffic, weights_history, timestamps, state)
    timeline = out / "timeline.png"
    timeline_chart(timeline, state, decisions, timestamps, weights_history, policy)

    blocks = document(state, decisions, timestamps, weights_history, policy,
                      registry_baseline, k, kpi_charts, control_charts, traffic, timeline)
    title = f"kpigate rollout report: {state.name}"
    markdown = out / "report.md"
    markdown.write_text(to_markdown(blocks), encoding="utf-8")
    page = out / "report.html"
    page.write_text(to_html(blocks, title), encoding="utf-8")
    return ReportFiles(out, markdown, page, kpi_charts, control_charts, traffic, timeline)

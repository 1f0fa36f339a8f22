"""The console's tables: the KPI evidence table of ``kpigate status`` and ``kpigate
simulate``, and :func:`aligned`, the plain column layout every console table uses
(``kpigate list`` too).

The rows come from :func:`mlflow_kpigate.report.kpi_table.kpi_rows`, like the report's
and the pull-request comment's; the console chooses its columns (with the bounds'
thresholds, without the margin) and terser numbers: blanks for missing values, four
decimals for signed ones, infinities shown.
"""

from __future__ import annotations

from mlflow_kpigate.core.decision import Decision
from mlflow_kpigate.policy import Policy
from mlflow_kpigate.report.formats import NumberStyle
from mlflow_kpigate.report.kpi_table import Column, kpi_rows, table_cells

CONSOLE = NumberStyle(missing="", keep_infinite=True, signed="+.4f", pair_on_first=True,
                      samples_sep="/", omit_unknown_target=True)
_COLUMNS: tuple[Column, ...] = (
    ("KPI", lambda r: r.kpi),
    ("role", lambda r: r.role),
    ("baseline", lambda r: r.baseline),
    ("candidate", lambda r: r.candidate),
    ("cand-base", lambda r: r.difference),
    ("bounds [promote, rollback] (+ = better)", lambda r: r.interval),
    ("threshold", lambda r: r.thresholds),
    ("samples", lambda r: r.samples),
    ("verdict", lambda r: r.verdict.value),
)


def evidence_table(decision: Decision, policy: Policy | None = None) -> list[str]:
    """One aligned line per KPI, after a header line (with ``policy``, values in their
    units: latency in ms)."""
    headers, cells = table_cells(kpi_rows(decision, policy, style=CONSOLE), _COLUMNS)
    return aligned([headers, *cells])


def aligned(rows: list[list[str]] | list[tuple[str, ...]]) -> list[str]:
    """One line per row (the first is the header), columns left-aligned two spaces apart,
    each line indented by two spaces and without trailing blanks."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in rows]

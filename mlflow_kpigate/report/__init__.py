"""The rollout report: ``report.md``, a self-contained ``report.html`` and PNG charts.

Public API::

    from mlflow_kpigate.report import build_report, ReportFiles

Modules, each owning one thing:

* :mod:`.build`: :func:`build_report` writes the files and returns :class:`ReportFiles`;
* :mod:`.document`: the report's sections as blocks;
* :mod:`.blocks`: the block model and its markdown and HTML renderers (escaping);
* :mod:`.charts`: the PNG charts (the only module that imports matplotlib, lazily);
* :mod:`.kpi_table`: the per-KPI evidence table of a decision;
* :mod:`.formats`: numbers and times as text.

Text from models, tags, policies and reasons is data, never markup. Missing or
non-finite numbers render as ``—``. Importing this package does not import matplotlib.
"""

from mlflow_kpigate.report.blocks import md_escape
from mlflow_kpigate.report.build import DEFAULT_CONTROL_K, ReportFiles, build_report
from mlflow_kpigate.report.formats import (
    DASH,
    fmt_delta,
    fmt_difference,
    fmt_interval,
    fmt_value,
)

__all__ = [
    "DASH",
    "DEFAULT_CONTROL_K",
    "ReportFiles",
    "build_report",
    "fmt_delta",
    "fmt_difference",
    "fmt_interval",
    "fmt_value",
    "md_escape",
]

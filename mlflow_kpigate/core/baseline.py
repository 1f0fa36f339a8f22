"""Registry baseline: μ and σ of each KPI for the baseline model version.

The registry (:mod:`mlflow_kpigate.registry`) fills this from the baseline version's
MLflow run metrics, their history, and earlier kpigate rollouts of that version; a rollout
keeps the figures it started with (:meth:`RegistryBaseline.to_dict`), so every evaluation
and its replay judge with the same ones. It is also readable from a YAML/JSON file for
``kpigate plan --baseline-file``::

    prevalence: 0.015          # share of labelled positives among requests
    label_coverage: 1.0        # share of requests that eventually get a label
    kpis:
      recall: {mean: 0.876, std: 0.01}
      precision: {mean: 0.918, std: 0.012}
      latency_p95: {mean: 0.120, std: 0.008, unit_sd: 0.35}
      fpr_fairness: {mean: 0.91, rate: 0.0012, segments: 3}

``mean``/``std``/``n`` summarise the KPI across the baseline's runs (the control limits).
The planning-only fields describe single predictions: ``unit_sd`` is the per-request
standard deviation on the tested scale (σ of log-latency for latency KPIs, σ of the value
for means and business KPIs); ``rate`` and ``segments`` describe a fairness KPI's rate and
number of (about equal) segments. A bare number is a mean.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow_kpigate.core.datafiles import read_yaml_or_json
from mlflow_kpigate.core.errors import UsageError

_KPI_FIELDS = ("mean", "std", "n", "unit_sd", "rate", "segments")


@dataclass(frozen=True)
class BaselineKpi:
    """μ, σ and how many values they summarise, for one KPI of the baseline version."""

    mean: float
    std: float | None = None
    n: int = 1
    unit_sd: float | None = None
    rate: float | None = None
    segments: int | None = None

    @property
    def has_spread(self) -> bool:
        """True when σ is known and positive (control limits need it)."""
        return self.std is not None and self.std > 0 and math.isfinite(self.std)


@dataclass(frozen=True)
class RegistryBaseline:
    """Baseline KPI figures keyed by the policy's KPI names, plus traffic facts for planning."""

    kpis: Mapping[str, BaselineKpi] = field(default_factory=dict)
    prevalence: float | None = None
    label_coverage: float = 1.0
    source: str | None = None

    def get(self, name: str) -> BaselineKpi | None:
        """The baseline figure for KPI ``name``, if known."""
        return self.kpis.get(name)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str | None = None) -> RegistryBaseline:
        """Build from a mapping (see the module docstring); raises ``UsageError``."""
        if source is None and isinstance(data, Mapping) and isinstance(data.get("source"), str):
            source = data["source"]
        where = f"{source}: " if source else ""
        if not isinstance(data, Mapping):
            raise UsageError(f"{where}a baseline file must be a mapping with 'kpis:'")
        unknown = set(data) - {"prevalence", "label_coverage", "kpis", "source"}
        if unknown:
            raise UsageError(f"{where}{sorted(unknown)[0]}: unknown field; allowed: "
                             "prevalence, label_coverage, kpis")
        kpis: dict[str, BaselineKpi] = {}
        raw = data.get("kpis") or {}
        if not isinstance(raw, Mapping):
            raise UsageError(f"{where}kpis: must be a mapping of KPI name to {{mean, std}}")
        for name, item in raw.items():
            path = f"{where}kpis.{name}"
            if isinstance(item, (int, float)) and not isinstance(item, bool):
                kpis[str(name)] = BaselineKpi(float(item))
                continue
            if not isinstance(item, Mapping) or "mean" not in item:
                raise UsageError(f"{path}: needs 'mean' (and optionally 'std', 'n')")
            extra = set(item) - set(_KPI_FIELDS)
            if extra:
                raise UsageError(f"{path}.{sorted(extra)[0]}: unknown field; allowed: "
                                 f"{', '.join(_KPI_FIELDS)}")
            try:
                values = {k: (None if item.get(k) is None else float(item[k]))
                          for k in _KPI_FIELDS}
            except (TypeError, ValueError):
                raise UsageError(f"{path}: {', '.join(_KPI_FIELDS)} must be numbers") from None
            for key in ("std", "unit_sd", "rate"):
                value = values[key]
                if value is not None and value < 0:
                    raise UsageError(f"{path}.{key}: must be >= 0")
            segs = values["segments"]
            if segs is not None and (segs < 2 or segs != int(segs)):
                raise UsageError(f"{path}.segments: must be a whole number >= 2")
            mean = values["mean"]
            assert mean is not None  # "mean" in item was checked above
            kpis[str(name)] = BaselineKpi(
                mean=mean,
                std=values["std"],
                n=int(values["n"] or 1),
                unit_sd=values["unit_sd"],
                rate=values["rate"],
                segments=None if segs is None else int(segs),
            )
        prevalence = data.get("prevalence")
        if prevalence is not None:
            if isinstance(prevalence, bool) or not isinstance(prevalence, (int, float)) \
                    or not 0 < prevalence < 1:
                raise UsageError(f"{where}prevalence: must be a fraction between 0 and 1")
            prevalence = float(prevalence)
        coverage = data.get("label_coverage", 1.0)
        if isinstance(coverage, bool) or not isinstance(coverage, (int, float)) \
                or not 0 < coverage <= 1:
            raise UsageError(f"{where}label_coverage: must be a fraction in (0, 1]")
        return cls(kpis, prevalence, float(coverage), source)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping; :meth:`from_dict` restores an equal baseline."""
        kpis = {name: {k: getattr(kpi, k) for k in _KPI_FIELDS if getattr(kpi, k) is not None}
                for name, kpi in self.kpis.items()}
        return {"prevalence": self.prevalence, "label_coverage": self.label_coverage,
                "kpis": kpis, "source": self.source}

    def updated_with(self, other: RegistryBaseline) -> RegistryBaseline:
        """These figures with ``other``'s on top: its KPI fields where it gives them, its
        prevalence and (when not the default 1) its label coverage."""
        kpis = dict(self.kpis)
        for name, theirs in other.kpis.items():
            mine = kpis.get(name)
            if mine is None:
                kpis[name] = theirs
                continue
            kpis[name] = BaselineKpi(
                theirs.mean, theirs.std if theirs.std is not None else mine.std,
                theirs.n if theirs.std is not None else mine.n,
                *(getattr(theirs, f) if getattr(theirs, f) is not None else getattr(mine, f)
                  for f in ("unit_sd", "rate", "segments")))
        coverage = other.label_coverage if other.label_coverage != 1.0 else self.label_coverage
        sources = " + ".join(s for s in (self.source, other.source) if s)
        return RegistryBaseline(kpis, other.prevalence if other.prevalence is not None
                                else self.prevalence, coverage, sources or None)

    @classmethod
    def from_file(cls, path: str | Path) -> RegistryBaseline:
        """Read a YAML or JSON baseline file; raises ``UsageError`` naming the problem."""
        data = read_yaml_or_json(path, "baseline file")
        return cls.from_dict(data or {}, str(path))

"""What a :class:`~mlflow_kpigate.kpis.aggregate.RoleAggregate` keeps: the frozen
:class:`AggregateSpec` (segment fields, value names, score and latency resolutions).

Two aggregates merge only when their specs are equal; the spec travels with the
aggregate's JSON (``to_dict`` / ``from_dict``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["AggregateSpec"]


@dataclass(frozen=True)
class AggregateSpec:
    """What a :class:`RoleAggregate` keeps: segment fields, value names and resolutions."""

    segment_fields: tuple[str, ...] = ()
    value_names: tuple[str, ...] = ()
    score_bins: int = 1000
    latency_growth: float = 1.02

    def __post_init__(self) -> None:
        for attr in ("segment_fields", "value_names"):
            names = getattr(self, attr)
            if isinstance(names, str):
                raise ValueError(f"{attr} must be a sequence of names, not a single string")
            names = tuple(names)
            for name in names:
                if not isinstance(name, str) or not name:
                    raise ValueError(f"{attr} must contain non-empty strings, got {name!r}")
            if len(set(names)) != len(names):
                raise ValueError(f"{attr} contains duplicate names: {list(names)}")
            # Frozen, so normalise lists to tuples through object.__setattr__; equality
            # (used to refuse merging different specs) then does not depend on the type.
            object.__setattr__(self, attr, names)
        bins = self.score_bins
        if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
            raise ValueError(f"score_bins must be a positive integer, got {bins!r}")
        growth = self.latency_growth
        if (
            isinstance(growth, bool)
            or not isinstance(growth, (int, float, np.floating))
            or not math.isfinite(growth)
            or growth <= 1
        ):
            raise ValueError(f"latency_growth must be a finite number > 1, got {growth!r}")
        object.__setattr__(self, "score_bins", int(bins))
        object.__setattr__(self, "latency_growth", float(growth))

    @classmethod
    def from_policy(cls, policy: Any) -> AggregateSpec:
        """The spec a policy needs (its ``segment_fields`` and ``value_names``)."""
        return cls(
            segment_fields=tuple(policy.segment_fields),
            value_names=tuple(policy.value_names),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {
            "segment_fields": list(self.segment_fields),
            "value_names": list(self.value_names),
            "score_bins": self.score_bins,
            "latency_growth": self.latency_growth,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AggregateSpec:
        """Inverse of :meth:`to_dict` (``ValueError`` if malformed)."""
        if not isinstance(d, Mapping):
            raise ValueError(f"spec: expected a mapping, got {type(d).__name__}")
        unknown = set(d) - {"segment_fields", "value_names", "score_bins", "latency_growth"}
        if unknown:
            raise ValueError(f"spec: unknown keys {sorted(unknown)}")
        return cls(
            segment_fields=tuple(d.get("segment_fields", ())),
            value_names=tuple(d.get("value_names", ())),
            score_bins=d.get("score_bins", 1000),
            latency_growth=d.get("latency_growth", 1.02),
        )

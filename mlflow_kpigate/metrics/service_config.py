"""The collector service's configuration: what it collects, and how, checked up front.

Every field is validated when the config is built (``ValueError`` naming the field and the
fix). One service, one deployment, one rollout: a new rollout for the same deployment should
start with a fresh data directory, since stage indexes restart at 0.

Authentication is on unless switched off: a config needs tokens for at least the
``ingest`` and ``operator`` scopes (:mod:`.service_auth`), or ``insecure_no_auth=True``
said on purpose (local tests and demos). ``stages`` are the rollout policy's stages, which
every stage notice is checked against (:mod:`.service_notices`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow_kpigate.core.records import ROLES
from mlflow_kpigate.kpis import AggregateSpec
from mlflow_kpigate.metrics.exposition import MAX_SEGMENT_VALUES
from mlflow_kpigate.metrics.service_auth import REQUIRED_SCOPES, CollectorTokens
from mlflow_kpigate.policy import Stage

__all__ = ["UNANSWERED", "CollectorServiceConfig"]

#: What to do with a request whose response never came: count it as a failed prediction
#: (Seldon logs no response when the model fails) or drop it.
UNANSWERED = ("error", "drop")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def _positive(value: Any, name: str, fix: str, *, allow_zero: bool = False) -> float:
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value) and (value >= 0 if allow_zero else value > 0))
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name}: must be a number {bound}, got {value!r}; {fix}")
    return float(value)


@dataclass(frozen=True)
class CollectorServiceConfig:
    """What the collector service collects, and how.

    ``deployment`` is the SeldonDeployment name (events from another one are refused);
    ``spec`` the policy's segment fields and value names
    (:meth:`AggregateSpec.from_policy`); ``maturity_s`` the policy's label maturity;
    ``threshold`` turns scores into 0/1 predictions; ``versions`` maps role to the model
    version recorded with its predictions (default: the event's ``Ce-Modelid``);
    ``stages`` the policy's stages (``policy.stages``); ``tokens`` the accepted tokens, or
    ``insecure_no_auth`` to accept every request (see the module docstring).
    """

    deployment: str
    data_dir: Path
    spec: AggregateSpec = field(default_factory=AggregateSpec)
    maturity_s: float = 0.0
    threshold: float = 0.5
    versions: Mapping[str, str] = field(default_factory=dict)
    pending_ttl_s: float = 600.0
    unanswered: str = "error"
    dedupe_s: float = 3600.0
    retention_s: float = 7 * 86400.0
    metrics_cache_s: float = 1.0
    sweep_interval_s: float = 5.0
    max_body_bytes: int = 16 * 2**20
    stages: tuple[Stage, ...] = ()
    tokens: CollectorTokens = field(default_factory=CollectorTokens)
    insecure_no_auth: bool = False
    # Segment values with a series of their own per stage and field; the rest: __other__.
    max_segment_values: int = MAX_SEGMENT_VALUES

    def __post_init__(self) -> None:
        if not isinstance(self.deployment, str) or not _DNS_LABEL.match(self.deployment):
            raise ValueError(f"deployment: {self.deployment!r} is not a DNS-1123 label; use "
                             "the SeldonDeployment name (lower-case letters, digits, '-')")
        object.__setattr__(self, "data_dir", Path(self.data_dir).expanduser())
        if not isinstance(self.spec, AggregateSpec):
            raise ValueError("spec: must be an AggregateSpec; build it with "
                             "AggregateSpec.from_policy(policy)")
        _positive(self.maturity_s, "maturity_s", "give the label maturity in seconds",
                  allow_zero=True)
        if not (isinstance(self.threshold, (int, float)) and not isinstance(self.threshold, bool)
                and 0 < self.threshold <= 1):
            raise ValueError(f"threshold: must be in (0, 1], got {self.threshold!r}; it turns "
                             "a score into a positive prediction")
        bad = sorted(set(self.versions) - set(ROLES))
        if bad or not all(isinstance(v, str) and v for v in self.versions.values()):
            raise ValueError(f"versions: must map 'baseline'/'candidate' to non-empty version "
                             f"strings, got {dict(self.versions)!r}")
        object.__setattr__(self, "versions", dict(self.versions))
        _positive(self.pending_ttl_s, "pending_ttl_s",
                  "allow at least the logger's delivery delay (e.g. 600)")
        if self.unanswered not in UNANSWERED:
            raise ValueError(f"unanswered: must be one of {', '.join(UNANSWERED)}, got "
                             f"{self.unanswered!r}")
        _positive(self.dedupe_s, "dedupe_s", "keep event ids at least as long as the logger "
                  "may retry")
        _positive(self.retention_s, "retention_s", "e.g. 604800 for a week")
        _positive(self.metrics_cache_s, "metrics_cache_s", "0 recomputes on every scrape",
                  allow_zero=True)
        _positive(self.sweep_interval_s, "sweep_interval_s", "e.g. 5")
        if (isinstance(self.max_body_bytes, bool) or not isinstance(self.max_body_bytes, int)
                or self.max_body_bytes < 1):
            raise ValueError(f"max_body_bytes: must be a positive integer, got "
                             f"{self.max_body_bytes!r}")
        if (isinstance(self.max_segment_values, bool)
                or not isinstance(self.max_segment_values, int) or self.max_segment_values < 1):
            raise ValueError(f"max_segment_values: must be a whole number of at least 1, got "
                             f"{self.max_segment_values!r}")
        self._check_stages()
        self._check_auth()

    def _check_stages(self) -> None:
        stages = tuple(self.stages) if isinstance(self.stages, (list, tuple)) else ()
        if not stages or not all(isinstance(s, Stage) for s in stages):
            raise ValueError("stages: must be the rollout policy's stages (policy.stages); "
                             "stage notices are checked against them")
        object.__setattr__(self, "stages", stages)

    def _check_auth(self) -> None:
        if not isinstance(self.tokens, CollectorTokens):
            raise ValueError("tokens: must be a CollectorTokens; read them with "
                             "service_auth.load_tokens")
        if not isinstance(self.insecure_no_auth, bool):
            raise ValueError(f"insecure_no_auth: must be true or false, got "
                             f"{self.insecure_no_auth!r}")
        if self.insecure_no_auth:
            if self.tokens.entries:
                raise ValueError("tokens: given together with insecure_no_auth "
                                 "(--insecure-no-auth), which accepts every request; give "
                                 "tokens or the flag, not both")
            return
        missing = self.tokens.missing(REQUIRED_SCOPES)
        if missing:
            raise ValueError(f"tokens: none for the {missing[0]} scope; give a token file for "
                             f"each of {', '.join(REQUIRED_SCOPES)} (labels too, if labels are "
                             "posted), or turn authentication off on purpose for a local test "
                             "(--insecure-no-auth)")

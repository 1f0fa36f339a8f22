"""The rollout's persisted state: phase, stage, applied traffic weights, and the deployment.

Phases follow the design's state machine::

    pending → shadow? → canary (stage i …) → baking? → promoted
                 ↘ holding (inside a stage) ↗
    any non-terminal phase → rolled_back | aborted

``baking`` is reached when the final 100% stage is approved and the policy has a
``bake``: the candidate serves everything (the promote alias points at it) while the
previous version scores a shadow copy of every request, and a change detector can still
roll back; ``promoted`` follows when the bake ends without a regression. A rollout rolled
back (or aborted) while baking keeps its ``bake_started_at``, which is how its status reads
``rolled_back_after_promotion``.

``approved_stage_index`` is the highest stage the gate (or an operator) approved; traffic
is never raised past it, whatever happens to the controller process.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from enum import Enum
from typing import Any

#: The ``kpigate.status`` of a rollout rolled back while baking (its phase: ``rolled_back``).
ROLLED_BACK_AFTER_PROMOTION = "rolled_back_after_promotion"


class Phase(str, Enum):
    """Where the rollout is; the value is what the ``kpigate.status`` tag shows."""

    PENDING = "pending"
    SHADOW = "shadow"
    CANARY = "canary"
    HOLDING = "holding"
    BAKING = "baking"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"
    ABORTED = "aborted"

    @property
    def terminal(self) -> bool:
        """No further evaluations happen in a terminal phase."""
        return self in (Phase.PROMOTED, Phase.ROLLED_BACK, Phase.ABORTED)


@dataclass(frozen=True)
class Weights:
    """What the router does with traffic.

    ``candidate_percent`` of live requests go to the candidate (0 in shadow); with
    ``shadow`` the candidate also scores a mirrored copy of every request off the response
    path; ``candidate_attached`` is False once the candidate is detached (after a rollback
    or delete), so the router neither serves nor mirrors to it. ``baseline_shadow`` is the
    reverse of ``shadow``, used while baking: the candidate answers (at 100%) and the
    baseline scores a mirrored copy of every request.

    The JSON form (:meth:`to_dict`) leaves ``baseline_shadow`` out while it is False, so
    weights of rollouts without a bake read and write exactly as before it existed.
    """

    candidate_percent: float = 0.0
    shadow: bool = False
    candidate_attached: bool = True
    baseline_shadow: bool = False

    @classmethod
    def baseline_only(cls) -> Weights:
        """All traffic to the baseline, candidate detached."""
        return cls(0.0, False, False)

    @classmethod
    def baking(cls) -> Weights:
        """The candidate answers everything; the baseline scores a shadow copy."""
        return cls(100.0, False, True, baseline_shadow=True)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping (``baseline_shadow`` only when set; see the class)."""
        d = asdict(self)
        if not self.baseline_shadow:
            del d["baseline_shadow"]
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Weights:
        """Inverse of :meth:`to_dict` (unknown keys from newer versions are ignored)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def describe(self) -> str:
        """Human summary, e.g. ``candidate 25%`` or ``shadow``."""
        if not self.candidate_attached:
            return "baseline 100% (candidate detached)"
        if self.shadow:
            return "baseline 100%, candidate shadow"
        if self.baseline_shadow:
            return f"candidate {self.candidate_percent:g}%, baseline shadow"
        return f"baseline {100 - self.candidate_percent:g}%, candidate {self.candidate_percent:g}%"


@dataclass(frozen=True)
class Readiness:
    """Whether the traffic a state asks for is being served; ``failed``: it never will be."""

    ready: bool
    reason: str = ""
    failed: bool = False


_ROUTER_DEFAULTS: dict[str, Any] = {"workers": 1, "candidate_timeout_s": 1.0,
                                     "log_fsync": "interval", "max_body_bytes": 16 * 2**20,
                                     "warm_candidate": True, "metrics_port": 0,
                                     "metrics_host": "127.0.0.1"}


@dataclass(frozen=True)
class RolloutState:
    """Everything needed to resume a rollout after any crash."""

    name: str
    model_name: str
    candidate_version: str
    baseline_version: str
    candidate_uri: str
    baseline_uri: str
    policy_file: str
    tracking_uri: str
    port: int
    stage_index: int = 0
    approved_stage_index: int = 0
    stage_started_at: float = field(default_factory=time.time)
    # When the stage's traffic was first seen served (backends that need a readiness wait,
    # e.g. Seldon); samples and the stage's minimum duration count from then. None: not
    # yet ready, or a backend that applies weights at once (then stage_started_at counts).
    stage_ready_at: float | None = None
    phase: Phase = Phase.PENDING
    paused: bool = False
    weights: Weights = field(default_factory=Weights)
    evaluations: int = 0
    last_decision: dict[str, Any] | None = None
    reason: str = ""
    rollout_run_id: str | None = None
    routing_key: str | None = None
    threshold: float = 0.5  # score at or above which the router counts a positive
    promote_alias: str = "champion"
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    alert_keys: tuple[str, ...] = ()
    revision: int = 0  # bumped by every save; guards against lost concurrent updates
    # True from the save of a transition until its side effects (tags, alias, alerts) ran.
    effects_pending: bool = False
    # When the candidate began serving 100% under a bake (None: never baked). Kept after
    # the bake ends, so a rollback after promotion can be told from one before it.
    bake_started_at: float | None = None
    # The embedded router's options (-C workers, candidate_timeout, log_fsync, max_body,
    # warm_candidate).
    workers: int = 1
    candidate_timeout_s: float = 1.0
    log_fsync: str = "interval"
    max_body_bytes: int = 16 * 2**20
    warm_candidate: bool = True
    # Where the embedded controller serves its decision metrics (-C metrics_host,
    # metrics_port; port 0: a free one at each start, written to metrics.json).
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"

    @property
    def status(self) -> str:
        """What the ``kpigate.status`` tag shows: the phase, except that a rollback of a
        rollout that had reached its bake reads ``rolled_back_after_promotion`` (the
        candidate had been serving everything, and the alias is moved back)."""
        if self.bake_started_at is not None and self.phase is Phase.ROLLED_BACK:
            return ROLLED_BACK_AFTER_PROMOTION
        return self.phase.value

    def evolve(self, **changes: Any) -> RolloutState:
        """A copy with ``changes`` and a fresh ``updated_at``."""
        return replace(self, updated_at=time.time(), **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping."""
        d = asdict(self)
        d["phase"] = self.phase.value
        d["weights"] = self.weights.to_dict()
        d["alert_keys"] = list(self.alert_keys)
        if self.bake_started_at is None:
            del d["bake_started_at"]  # a rollout without a bake keeps its old JSON form
        for name, default in _ROUTER_DEFAULTS.items():
            if d[name] == default:
                del d[name]  # likewise a router with default options
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RolloutState:
        """Inverse of :meth:`to_dict` (unknown keys from newer versions are ignored)."""
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs["phase"] = Phase(kwargs.get("phase", "pending"))
        kwargs["weights"] = Weights.from_dict(kwargs.get("weights", {}))
        kwargs["alert_keys"] = tuple(kwargs.get("alert_keys", ()))
        return cls(**kwargs)

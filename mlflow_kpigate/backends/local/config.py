"""What the embedded router serves and how: :class:`RouterConfig`, checked when it is built."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mlflow_kpigate.backends.local.routing import RoutingKey

__all__ = ["RouterConfig"]


@dataclass(frozen=True)
class RouterConfig:
    """What the router serves and how.

    ``baseline_model``/``candidate_model`` are objects with ``.predict(DataFrame)`` (MLflow
    pyfunc models); ``candidate_model`` may be ``None`` once the candidate is detached.
    ``routing_key`` is ``"header:NAME"`` or ``"column:NAME"`` (default: the
    ``X-Kpigate-Routing-Key`` header). ``salt`` defaults to deployment and candidate
    version, so each rollout samples its own set of routing keys.
    """

    deployment: str
    baseline_version: str
    candidate_version: str | None
    baseline_model: Any = field(repr=False)
    candidate_model: Any | None = field(repr=False)
    routing_key: str | None = None
    segment_fields: tuple[str, ...] = ()
    threshold: float = 0.5
    shadow_timeout_s: float = 5.0
    store_features: bool = False
    shadow_max_inflight: int = 16
    salt: str | None = None
    # A live candidate call that takes longer is answered by the baseline (and logged as
    # a candidate error); shadow copies have their own, longer, timeout.
    candidate_timeout_s: float = 1.0
    # Threads scoring the baseline (and parsing requests): one is fastest for models
    # that hold the GIL (most scikit-learn); more help models that release it.
    scoring_threads: int = 1
    # /invocations and /feedback bodies above this are refused (413) before they are read
    # whole: a client must not be able to make the router hold gigabytes.
    max_body_bytes: int = 16 * 2**20
    # In a canary stage the candidate also scores an unlogged copy of requests the
    # baseline answered (when it has nothing in flight). A model called a few times a
    # second runs cold (caches, the interpreter's own paths) and measured 1.6x slower per
    # call than the same model called hundreds of times a second; without the copies a
    # 5% candidate is compared, on latency, with a baseline kept warm by the other 95%.
    warm_candidate: bool = True
    # The rollout served (its MLflow run id), sent as ``X-Kpigate-Rollout`` by ``/health``:
    # a new rollout's router starts beside the one it replaces, on the same port.
    rollout: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.deployment, str) or not self.deployment:
            raise ValueError("deployment must be a non-empty string")
        RoutingKey.parse(self.routing_key)  # fail at construction, not on the first request
        object.__setattr__(self, "segment_fields", tuple(self.segment_fields))
        if not (isinstance(self.threshold, (int, float)) and 0 < self.threshold <= 1):
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold!r}")
        if not (isinstance(self.shadow_timeout_s, (int, float)) and self.shadow_timeout_s > 0):
            raise ValueError(f"shadow_timeout_s must be > 0, got {self.shadow_timeout_s!r}")
        if not (isinstance(self.candidate_timeout_s, (int, float))
                and self.candidate_timeout_s > 0):
            raise ValueError(
                f"candidate_timeout_s must be > 0, got {self.candidate_timeout_s!r}")
        if not (isinstance(self.max_body_bytes, int) and self.max_body_bytes >= 1):
            raise ValueError(f"max_body_bytes must be an integer >= 1, got "
                             f"{self.max_body_bytes!r}")
        if not (isinstance(self.scoring_threads, int) and self.scoring_threads >= 1):
            raise ValueError(
                f"scoring_threads must be an integer >= 1, got {self.scoring_threads!r}")
        if not (isinstance(self.shadow_max_inflight, int) and self.shadow_max_inflight >= 1):
            raise ValueError(
                f"shadow_max_inflight must be an integer >= 1, got {self.shadow_max_inflight!r}"
            )

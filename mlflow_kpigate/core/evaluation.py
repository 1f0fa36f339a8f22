"""One evaluation of a rollout, kept with everything the gate was given, so it can be replayed.

An :class:`Evaluation` holds the gate's inputs — the stage it judged, how long that stage
had been served, the stage samples (both roles' KPI aggregates per stratum), the registry
baseline and the digest of the policy — and the :class:`~.decision.Decision` it returned.
The gate is a pure function of those inputs, so ``kpigate replay`` can re-judge every
recorded evaluation, with the original policy (the decisions must come out identical) or
another one.

Serialised form (:meth:`Evaluation.to_dict`): the stage samples are gzip-compressed JSON in
base64 (``samples_gz``), about 4 KB per role and stage instead of about 14 KB, because the
record travels inside the audit log, whose cluster copy lives in ConfigMaps (1 MiB each).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mlflow_kpigate.core.baseline import RegistryBaseline
from mlflow_kpigate.core.decision import Decision
from mlflow_kpigate.core.samples import StageSample


def policy_digest(raw: Mapping[str, Any]) -> str:
    """``sha256:…`` of a policy's parsed document (key order and YAML layout do not count)."""
    text = json.dumps(raw, sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def encode_samples(samples: Sequence[StageSample]) -> str:
    """Stage samples as base64 gzip JSON (see the module docstring)."""
    data = json.dumps([s.to_dict() for s in samples], allow_nan=False,
                      separators=(",", ":")).encode()
    # mtime=0: the same samples always encode to the same text.
    return base64.b64encode(gzip.compress(data, mtime=0)).decode("ascii")


def decode_samples(text: str) -> tuple[StageSample, ...]:
    """Inverse of :func:`encode_samples` (``ValueError`` if corrupt)."""
    try:
        items = json.loads(gzip.decompress(base64.b64decode(text.encode("ascii"))))
    except (OSError, EOFError, ValueError) as exc:
        raise ValueError(f"stage samples are corrupt ({exc})") from None
    return tuple(StageSample.from_dict(item) for item in items)


@dataclass(frozen=True)
class Evaluation:
    """The gate's inputs at one evaluation and the decision it returned.

    ``number`` counts the rollout's evaluations from 1; ``at`` is the controller's clock;
    ``stage_elapsed_s`` is the time the gate was told the stage had been served.
    ``metrics_unavailable`` says why there were no samples (the decision is then a hold
    that did not consult the gate). ``policy_digest`` is empty for evaluations recorded
    before inputs were kept: those carry a decision but cannot be replayed.
    """

    number: int
    at: float
    stage_index: int
    stage_elapsed_s: float
    decision: Decision
    samples: tuple[StageSample, ...] = ()
    registry_baseline: RegistryBaseline | None = None
    policy_digest: str = ""
    metrics_unavailable: str | None = None

    @property
    def replayable(self) -> bool:
        """Whether the inputs were kept (a gate decision can be recomputed from them)."""
        return bool(self.policy_digest) and self.metrics_unavailable is None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping, the decision excluded (the audit event carries it)."""
        return {
            "number": self.number,
            "at": self.at,
            "stage_index": self.stage_index,
            "stage_elapsed_s": self.stage_elapsed_s,
            "policy_digest": self.policy_digest,
            "registry_baseline": (None if self.registry_baseline is None
                                  else self.registry_baseline.to_dict()),
            "metrics_unavailable": self.metrics_unavailable,
            "samples_gz": encode_samples(self.samples),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], decision: Decision) -> Evaluation:
        """Inverse of :meth:`to_dict` with the event's ``decision``."""
        baseline = data.get("registry_baseline")
        return cls(
            number=int(data["number"]),
            at=float(data["at"]),
            stage_index=int(data["stage_index"]),
            stage_elapsed_s=float(data["stage_elapsed_s"]),
            decision=decision,
            samples=decode_samples(data["samples_gz"]) if data.get("samples_gz") else (),
            registry_baseline=(RegistryBaseline.from_dict(baseline) if baseline else None),
            policy_digest=str(data.get("policy_digest") or ""),
            metrics_unavailable=data.get("metrics_unavailable"),
        )

    @classmethod
    def decision_only(cls, number: int, at: float, decision: Decision) -> Evaluation:
        """An evaluation recorded before inputs were kept: its decision alone."""
        return cls(number=number, at=at, stage_index=decision.stage_index,
                   stage_elapsed_s=float("nan"), decision=decision)

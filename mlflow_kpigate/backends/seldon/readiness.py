"""Whether Seldon has rolled out what kpigate applied, from an object as read (pure).

:func:`readiness` judges a Seldon v1 ``SeldonDeployment``, :func:`readiness_v2` a Seldon
v2 ``Model`` or ``Experiment``; both return a :class:`~mlflow_kpigate.core.state.Readiness`
whose reason says what is still missing, and which is ``failed`` when Seldon reports a
failure rather than progress. Nothing here talks to the cluster.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from mlflow_kpigate.backends.seldon.cluster_errors import one_line
from mlflow_kpigate.backends.seldon.kinds import SPEC_HASH_ANNOTATION
from mlflow_kpigate.core.state import Readiness

__all__ = ["readiness", "readiness_v2"]


def _predictor_deployments(sdep: Mapping[str, Any], predictor: Mapping[str, Any],
                           statuses: Mapping[str, Any]) -> list[str]:
    """Names in ``status.deploymentStatus`` that belong to ``predictor``.

    Seldon names a predictor's Deployments ``{sdep}-{predictor}-{i}-{containers}`` (or
    ``{sdep}-{predictor}-{i}-{componentSpec metadata.name}``), hashed to ``seldon-<md5>``
    when longer than 63 characters, and its separate engine ``{sdep}-{predictor}-svc-orch``.
    Both the exact names and the ``{sdep}-{predictor}-`` prefix are matched.
    """
    sdep_name = (sdep.get("metadata") or {}).get("name", "")
    pname = predictor.get("name", "")
    expected: set[str] = set()
    for i, comp in enumerate(predictor.get("componentSpecs") or []):
        comp = comp or {}
        base = f"{sdep_name}-{pname}-{i}-"
        meta_name = (comp.get("metadata") or {}).get("name")
        containers = ((comp.get("spec") or {}).get("containers")) or []
        full = base + (meta_name or "-".join(c.get("name", "") for c in containers))
        if len(full) > 63:
            digest = hashlib.md5(full.encode(), usedforsecurity=False).hexdigest()
            expected.update({f"seldon-{digest}", f"{sdep_name}-{digest}"})
        else:
            expected.add(full)
    prefix = f"{sdep_name}-{pname}-"
    return sorted(d for d in statuses if d in expected or d.startswith(prefix))


def readiness(sdep: Mapping[str, Any], expected_spec_hash: str | None) -> Readiness:
    """Readiness of a Seldon v1 ``SeldonDeployment`` as read from the cluster.

    Ready only when ``status.state`` is ``Available``, every predictor of the spec has
    Deployments in ``status.deploymentStatus`` each with ``availableReplicas >= replicas
    > 0``, and the ``kpigate.io/managed-spec`` annotation equals ``expected_spec_hash``
    (when given: the object still carries the spec kpigate applied — Seldon v1 does not
    report ``observedGeneration``; when it does, it must reach ``metadata.generation``).
    ``failed`` when ``status.state`` is ``Failed``.
    """
    meta = sdep.get("metadata") or {}
    name = meta.get("name", "?")
    status = sdep.get("status") or {}
    state = status.get("state")
    if state == "Failed":
        why = one_line(status.get("description") or "no description")
        return Readiness(False, f"SeldonDeployment {name} failed: {why}", failed=True)
    applied = (meta.get("annotations") or {}).get(SPEC_HASH_ANNOTATION)
    if expected_spec_hash is not None and applied != expected_spec_hash:
        return Readiness(False, f"SeldonDeployment {name} carries spec {applied or 'none'} "
                                f"(annotation {SPEC_HASH_ANNOTATION}), not the applied "
                                f"{expected_spec_hash}")
    observed, generation = status.get("observedGeneration"), meta.get("generation")
    if observed is not None and generation is not None and int(observed) < int(generation):
        return Readiness(False, f"SeldonDeployment {name}: Seldon has seen generation "
                                f"{observed}, not yet {generation}")
    if state != "Available":
        return Readiness(False, f"SeldonDeployment {name} is {state or 'not reported yet'}")
    statuses = status.get("deploymentStatus") or {}
    predictors = (sdep.get("spec") or {}).get("predictors") or []
    if not predictors:
        return Readiness(False, f"SeldonDeployment {name} has no predictors")
    for pred in predictors:
        deps = _predictor_deployments(sdep, pred, statuses)
        if not deps:
            return Readiness(False, f"SeldonDeployment {name}: no Deployment status yet for "
                                    f"predictor {pred.get('name')!r}")
        for dep in deps:
            info = statuses.get(dep) or {}
            want = int(info.get("replicas") or 0)
            have = int(info.get("availableReplicas") or 0)
            if not (have >= want > 0):
                return Readiness(False, f"SeldonDeployment {name}: predictor "
                                        f"{pred.get('name')!r} Deployment {dep} has {have}/"
                                        f"{want} replicas available")
    return Readiness(True, f"SeldonDeployment {name} is Available with every predictor's "
                           f"replicas available ({len(predictors)} predictors)")


def readiness_v2(obj: Mapping[str, Any]) -> Readiness:
    """Readiness of a Seldon v2 ``Model`` or ``Experiment``: its ``Ready`` condition is
    ``"True"`` and, when reported, ``status.observedGeneration`` reached
    ``metadata.generation``. ``failed`` when ``Ready`` is ``"False"`` with a reason or
    message naming a failure (Seldon's ``ModelFailed``, ``ScheduleFailed``, …)."""
    meta = obj.get("metadata") or {}
    what = f"{obj.get('kind', 'object')} {meta.get('name', '?')}"
    status = obj.get("status") or {}
    ready = next((c for c in status.get("conditions") or []
                  if isinstance(c, dict) and c.get("type") == "Ready"), None)
    observed, generation = status.get("observedGeneration"), meta.get("generation")
    if ready is None:
        return Readiness(False, f"{what}: no Ready condition reported yet")
    detail = one_line(" ".join(str(ready.get(k) or "") for k in ("reason", "message")))
    if ready.get("status") == "True":
        if observed is not None and generation is not None and int(observed) < int(generation):
            return Readiness(False, f"{what}: Seldon has seen generation {observed}, not yet "
                                    f"{generation}")
        return Readiness(True, f"{what} is Ready")
    failed = ready.get("status") == "False" and "fail" in detail.lower()
    return Readiness(False, f"{what} is not Ready ({detail or ready.get('status')})",
                     failed=failed)

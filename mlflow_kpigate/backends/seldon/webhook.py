"""Seldon's admission rules as pure checks, run on every manifest and patch result.

The CRD schemas only check shapes; Seldon Core's validating webhook rejects the rest at
apply time. Checking the same rules here means a bad weight change is caught before it
reaches the cluster (and in ``kpigate render``), with a message saying what is wrong.

:func:`check_webhook_rules` follows the v1.17 SeldonDeployment webhook (``checkTraffic``,
``validateShadow``, duplicate predictor names, prepackaged servers needing ``modelUri``, a
logger needing ``mode``) and is stricter in three places, each because the router
would otherwise misbehave where Seldon accepts the spec:

* traffic must be an integer from 0 to 100 on every predictor (Seldon bounds only the
  shadow's);
* a single live predictor next to a shadow must carry 0 (unset) or 100, because Seldon
  skips the sum check there but Istio would route only that share;
* predictor names must be DNS-1123 labels, because Seldon derives Service and Deployment
  names from them.

:func:`check_experiment_rules` does the same for a v2 ``Experiment`` (Seldon v2.6's
scheduler rejects an experiment without candidates; a ``default`` outside the candidates
or a mirror that is also a candidate would route surprisingly, so they are rejected too).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeGuard

from mlflow_kpigate.backends.seldon.target import dns_label_problem
from mlflow_kpigate.core.errors import KpigateError

#: Implementations that are Seldon prepackaged model servers (they need ``modelUri``).
PREPACKAGED_SERVERS = ("SKLEARN_SERVER", "XGBOOST_SERVER", "TENSORFLOW_SERVER",
                       "MLFLOW_SERVER", "TRITON_SERVER", "HUGGINGFACE_SERVER",
                       "TEMPO_SERVER")
_TRANSPORTS = ("rest", "grpc")
_SERVER_TYPES = ("rpc", "kafka")


class ManifestError(KpigateError):
    """A Seldon manifest (or a patch's result) that Seldon Core would reject."""


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _graph_problems(unit: Any, path: str) -> list[str]:
    if not isinstance(unit, Mapping):
        return [f"{path}: must be a mapping with at least a name"]
    problems: list[str] = []
    if not unit.get("name"):
        problems.append(f"{path}.name: missing; every graph node needs a name")
    if unit.get("implementation") in PREPACKAGED_SERVERS and not unit.get("modelUri"):
        problems.append(f"{path}.modelUri: missing; the prepackaged server "
                        f"{unit['implementation']} needs the model's storage URI")
    logger = unit.get("logger")
    if logger is not None and not (isinstance(logger, Mapping) and logger.get("mode")):
        problems.append(f"{path}.logger.mode: missing; set all, request or response")
    for i, child in enumerate(unit.get("children") or ()):
        problems.extend(_graph_problems(child, f"{path}.children[{i}]"))
    return problems


def webhook_problems(sdep: Mapping[str, Any]) -> list[str]:
    """Every rule of :func:`check_webhook_rules` that ``sdep`` breaks, one line each."""
    spec = sdep.get("spec")
    if not isinstance(spec, Mapping):
        return ["spec: missing; a SeldonDeployment needs spec.predictors"]
    problems: list[str] = []
    transport = spec.get("transport")
    if transport not in (None, "", *_TRANSPORTS):
        problems.append(f"spec.transport: {transport!r} is not rest or grpc")
    server_type = spec.get("serverType")
    if server_type not in (None, "", *_SERVER_TYPES):
        problems.append(f"spec.serverType: {server_type!r} is not rpc or kafka")
    predictors = spec.get("predictors")
    if not isinstance(predictors, list) or not predictors:
        return [*problems, "spec.predictors: empty; a SeldonDeployment needs a predictor"]
    seen: dict[str, int] = {}
    shadows: list[int] = []
    live: list[tuple[int, int]] = []  # (index, traffic) of non-shadow predictors
    for i, predictor in enumerate(predictors):
        path = f"spec.predictors[{i}]"
        if not isinstance(predictor, Mapping):
            problems.append(f"{path}: must be a mapping")
            continue
        name = predictor.get("name")
        problem = dns_label_problem(name if isinstance(name, str) else "")
        if problem:
            problems.append(f"{path}.name: {problem}")
        elif isinstance(name, str) and name in seen:
            problems.append(f"{path}.name: {name!r} is already the name of "
                            f"spec.predictors[{seen[name]}]; predictor names must be unique")
        elif isinstance(name, str):
            seen[name] = i
        traffic = predictor.get("traffic", 0)
        if not _is_int(traffic) or not 0 <= traffic <= 100:
            problems.append(f"{path}.traffic: {traffic!r} is not a whole percent from 0 to 100")
            traffic = 0
        if predictor.get("shadow") is True:
            shadows.append(i)
        else:
            live.append((i, traffic))
        problems.extend(_graph_problems(predictor.get("graph"), f"{path}.graph"))
    if len(shadows) > 1:
        problems.append(f"spec.predictors[{shadows[1]}].shadow: a second shadow predictor; "
                        "Seldon allows at most one")
    if shadows and not live:
        problems.append(f"spec.predictors[{shadows[0]}].shadow: a shadow cannot be the only "
                        "predictor; keep a live predictor serving the traffic")
    total = sum(t for _, t in live)
    if len(live) > 1 and total != 100:
        detail = " + ".join(f"{t}" for _, t in live)
        problems.append(f"spec.predictors[*].traffic: live predictors' traffic sums to {total} "
                        f"({detail}); it must sum to 100")
    if len(live) == 1 and live[0][1] not in (0, 100):
        problems.append(f"spec.predictors[{live[0][0]}].traffic: {live[0][1]} on the only live "
                        "predictor; use 100 (or leave it unset)")
    return problems


def check_webhook_rules(sdep: Mapping[str, Any]) -> None:
    """Raise :class:`ManifestError` if Seldon v1's admission webhook would reject ``sdep``."""
    problems = webhook_problems(sdep)
    if problems:
        name = (sdep.get("metadata") or {}).get("name", "?")
        raise ManifestError(f"SeldonDeployment {name}: " + "; ".join(problems))


def experiment_problems(experiment: Mapping[str, Any]) -> list[str]:
    """Every rule of :func:`check_experiment_rules` that ``experiment`` breaks."""
    spec = experiment.get("spec")
    if not isinstance(spec, Mapping):
        return ["spec: missing; an Experiment needs spec.candidates"]
    problems: list[str] = []
    candidates = spec.get("candidates")
    if not isinstance(candidates, list) or not candidates:
        return ["spec.candidates: empty; an Experiment needs at least one candidate"]
    names: list[str] = []
    for i, candidate in enumerate(candidates):
        path = f"spec.candidates[{i}]"
        if not isinstance(candidate, Mapping) or not candidate.get("name"):
            problems.append(f"{path}.name: missing; name the Model this candidate routes to")
            continue
        if candidate["name"] in names:
            problems.append(f"{path}.name: {candidate['name']!r} is listed twice")
        names.append(candidate["name"])
        weight = candidate.get("weight")
        if not _is_int(weight) or weight < 0:
            problems.append(f"{path}.weight: {weight!r} is not a whole number >= 0")
    weights = [c.get("weight") for c in candidates if isinstance(c, Mapping)]
    whole = [w for w in weights if _is_int(w)]
    if len(whole) == len(weights) and sum(whole) <= 0:
        problems.append("spec.candidates[*].weight: all weights are 0; give a candidate weight")
    default = spec.get("default")
    if default is not None and default not in names:
        problems.append(f"spec.default: {default!r} is not one of the candidates "
                        f"({', '.join(names)}); list it under candidates")
    mirror = spec.get("mirror")
    if mirror is not None:
        if not isinstance(mirror, Mapping) or not mirror.get("name"):
            problems.append("spec.mirror.name: missing; name the Model that gets the copies")
        else:
            if mirror["name"] in names:
                problems.append(f"spec.mirror.name: {mirror['name']!r} is also a candidate; a "
                                "model is either served or mirrored")
            percent = mirror.get("percent")
            if not _is_int(percent) or not 0 <= percent <= 100:
                problems.append(f"spec.mirror.percent: {percent!r} is not a whole percent from "
                                "0 to 100")
    return problems


def check_experiment_rules(experiment: Mapping[str, Any]) -> None:
    """Raise :class:`ManifestError` if a Seldon v2 ``Experiment`` would not route as meant."""
    problems = experiment_problems(experiment)
    if problems:
        name = (experiment.get("metadata") or {}).get("name", "?")
        raise ManifestError(f"Experiment {name}: " + "; ".join(problems))

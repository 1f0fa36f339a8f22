"""Guarded RFC 6902 JSON patches that move a live rollout's traffic.

Every patch is computed from the object *as read from the cluster* and starts with
``test`` operations: on ``/metadata/resourceVersion`` and on the name at every index that
a later operation addresses (``/spec/predictors/i/name`` for v1,
``/spec/candidates/i/name`` for v2). The API server applies a JSON patch atomically and
rejects it when a ``test`` fails, so a patch computed from a stale read (another writer,
a reordered list) changes nothing; the controller re-reads and recomputes.

Fields are addressed by index and written with ``replace`` when present, ``add`` when
absent: Seldon's defaulting webhook drops zero values (``traffic: 0``, ``shadow: false``)
from stored objects, and ``replace`` of a missing member is an error under RFC 6902.

Each v1 patch also rewrites the ``kpigate.io/managed-spec`` annotation (see
:mod:`.manifests`), and every patch's result is checked against Seldon's admission rules
(:mod:`.webhook`) before it is returned, so kpigate never sends one Seldon would refuse.

:func:`apply_json_patch` is a small, dependency-free implementation of ``add``, ``remove``,
``replace`` and ``test`` for the paths generated here, used by the tests and by
``kpigate render`` to show each patch's result.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from mlflow_kpigate.backends.seldon.manifests import (
    BASELINE,
    CANDIDATE,
    MANAGED_SPEC_ANNOTATION,
    ROLES,
    managed_spec_hash,
    role_traffic,
    v2_default,
    v2_model_name,
    v2_routing,
)
from mlflow_kpigate.backends.seldon.webhook import (
    ManifestError,
    check_experiment_rules,
    check_webhook_rules,
)
from mlflow_kpigate.core.state import Weights

Patch = list[dict[str, Any]]


class PatchConflict(ManifestError):
    """A ``test`` operation failed: the object changed since the patch was computed."""


# --------------------------------------------------------------------------------------
# JSON pointers and the patch interpreter
# --------------------------------------------------------------------------------------


def pointer(*tokens: str | int) -> str:
    """An RFC 6901 JSON pointer from raw tokens (escapes ``~`` and ``/``)."""
    return "".join("/" + str(t).replace("~", "~0").replace("/", "~1") for t in tokens)


def _tokens(path: Any, where: str) -> list[str]:
    if not isinstance(path, str) or (path and not path.startswith("/")):
        raise ManifestError(f"{where}.path: {path!r} is not a JSON pointer; start it with '/'")
    if not path:
        return []
    return [t.replace("~1", "/").replace("~0", "~") for t in path[1:].split("/")]


def _index(token: str, size: int, where: str, *, append: bool) -> int:
    if append and token == "-":
        return size
    if not token.isdigit() or (len(token) > 1 and token.startswith("0")):
        raise ManifestError(f"{where}: {token!r} is not an array index")
    index = int(token)
    if index > size or (index == size and not append):
        raise ManifestError(f"{where}: index {index} is out of range (array of {size})")
    return index


def _resolve(doc: Any, tokens: Sequence[str], where: str) -> Any:
    node = doc
    for depth, token in enumerate(tokens):
        at = pointer(*tokens[: depth + 1])
        if isinstance(node, list):
            node = node[_index(token, len(node), f"{where} at {at}", append=False)]
        elif isinstance(node, dict):
            if token not in node:
                raise ManifestError(f"{where}: {at} does not exist")
            node = node[token]
        else:
            raise ManifestError(f"{where}: {at} is inside a {type(node).__name__}")
    return node


def json_equal(a: Any, b: Any) -> bool:
    """Equality as RFC 6902 ``test`` defines it (``true`` is not ``1``; ``1`` is ``1.0``)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def apply_json_patch(doc: Mapping[str, Any], ops: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``doc`` with ``ops`` applied, in order; ``doc`` itself is left unchanged.

    Supports ``add``, ``remove``, ``replace`` and ``test``. A failed ``test`` raises
    :class:`PatchConflict`; any other impossible operation raises :class:`ManifestError`.
    """
    result: Any = copy.deepcopy(dict(doc))
    for i, op in enumerate(ops):
        where = f"patch[{i}]"
        kind = op.get("op")
        if kind not in ("add", "remove", "replace", "test"):
            raise ManifestError(f"{where}.op: {kind!r} is not supported; use add, remove, "
                                "replace or test")
        tokens = _tokens(op.get("path"), where)
        if kind != "remove" and "value" not in op:
            raise ManifestError(f"{where}: {kind} {op.get('path')} needs a value")
        if kind == "test":
            try:
                actual = _resolve(result, tokens, where)
            except ManifestError as exc:
                raise PatchConflict(f"{exc}; the object changed since the patch was computed "
                                    "- read it again and recompute the patch") from None
            if not json_equal(actual, op["value"]):
                raise PatchConflict(f"{where}: test {op['path']} expected {op['value']!r}, found "
                                    f"{actual!r}; the object changed since the patch was "
                                    "computed - read it again and recompute the patch")
            continue
        value = copy.deepcopy(op.get("value"))
        if not tokens:
            if kind == "remove":
                raise ManifestError(f"{where}: cannot remove the whole document")
            result = value
            continue
        parent = _resolve(result, tokens[:-1], where)
        last = tokens[-1]
        if isinstance(parent, list):
            index = _index(last, len(parent), f"{where} at {op['path']}", append=kind == "add")
            if kind == "add":
                parent.insert(index, value)
            elif kind == "replace":
                parent[index] = value
            else:
                del parent[index]
        elif isinstance(parent, dict):
            if kind != "add" and last not in parent:
                raise ManifestError(f"{where}: {kind} {op['path']}: it does not exist")
            if kind == "remove":
                del parent[last]
            else:
                parent[last] = value
        else:
            raise ManifestError(f"{where}: {op['path']} is inside a {type(parent).__name__}")
    return result


# --------------------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------------------


def _resource_version_guard(current: Mapping[str, Any], kind: str) -> dict[str, Any]:
    version = (current.get("metadata") or {}).get("resourceVersion")
    if not version:
        raise ManifestError(f"{kind}: metadata.resourceVersion missing; compute patches from "
                            "the object as read from the cluster")
    return {"op": "test", "path": "/metadata/resourceVersion", "value": version}


def _set(ops: Patch, container: Mapping[str, Any], path: str, key: str, value: Any,
         default: Any) -> None:
    """Append the op that makes ``container[key] == value`` (none if it already is)."""
    if key in container:
        if not json_equal(container[key], value):
            ops.append({"op": "replace", "path": f"{path}/{key}", "value": value})
    elif not json_equal(value, default):
        ops.append({"op": "add", "path": f"{path}/{key}", "value": value})


def _annotation_op(current: Mapping[str, Any], value: str) -> dict[str, Any] | None:
    annotations = (current.get("metadata") or {}).get("annotations")
    if annotations is None:
        return {"op": "add", "path": "/metadata/annotations",
                "value": {MANAGED_SPEC_ANNOTATION: value}}
    if annotations.get(MANAGED_SPEC_ANNOTATION) == value:
        return None
    kind = "replace" if MANAGED_SPEC_ANNOTATION in annotations else "add"
    return {"op": kind, "path": pointer("metadata", "annotations", MANAGED_SPEC_ANNOTATION),
            "value": value}


def _predictors(current: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    predictors = (current.get("spec") or {}).get("predictors")
    if not isinstance(predictors, list):
        raise ManifestError("SeldonDeployment: spec.predictors missing; is this a "
                            "SeldonDeployment kpigate created?")
    names = [p.get("name") for p in predictors]
    strangers = [n for n in names if n not in ROLES]
    if strangers:
        raise ManifestError(f"SeldonDeployment: unexpected predictor(s) {strangers}; kpigate "
                            f"manages exactly the predictors {BASELINE!r} and {CANDIDATE!r} - "
                            "remove the others or use another deployment name")
    return predictors


def _name_guards(items: Sequence[Mapping[str, Any]], path: str) -> Patch:
    return [{"op": "test", "path": f"{path}/{i}/name", "value": item.get("name")}
            for i, item in enumerate(items)]


def _finish_v1(current: Mapping[str, Any], guards: Patch, changes: Patch) -> Patch:
    """Guards + changes + the managed-spec annotation, checked against Seldon's rules."""
    result = apply_json_patch(current, changes)
    stamp = _annotation_op(result, managed_spec_hash(result))
    ops = guards + changes + ([stamp] if stamp else [])
    check_webhook_rules(apply_json_patch(current, ops))
    return ops


# --------------------------------------------------------------------------------------
# Seldon v1: SeldonDeployment
# --------------------------------------------------------------------------------------


def weights_patch(current: Mapping[str, Any], weights: Weights, *,
                  candidate_predictor: Mapping[str, Any] | None = None) -> Patch:
    """A guarded JSON patch moving the SeldonDeployment ``current`` to ``weights``.

    ``candidate_predictor`` (from :func:`~.manifests.predictor`) is needed only when the
    candidate has traffic or a shadow in ``weights`` but no predictor in ``current``; it is
    then added at the end. A role whose predictor is absent and that should get nothing
    stays absent, so a repeated call after a removal is harmless.
    """
    predictors = _predictors(current)
    guards = [_resource_version_guard(current, "SeldonDeployment"),
              *_name_guards(predictors, "/spec/predictors")]
    changes: Patch = []
    index = {p.get("name"): i for i, p in enumerate(predictors)}
    for role, share in role_traffic(weights).items():
        needed = share.traffic > 0 or share.shadow
        if role not in index:
            if not needed:
                continue
            if role == BASELINE or candidate_predictor is None:
                raise ManifestError(
                    f"SeldonDeployment: no {role!r} predictor to give {share.traffic}% "
                    + ("(the baseline predictor was removed; start a new rollout)"
                       if role == BASELINE else
                       "; pass candidate_predictor=predictor(target, 'candidate', model, ...)"))
            added = copy.deepcopy(dict(candidate_predictor))
            added.update(name=CANDIDATE, traffic=share.traffic)
            added.pop("shadow", None)
            if share.shadow:
                added["shadow"] = True
            changes.append({"op": "add", "path": "/spec/predictors/-", "value": added})
            continue
        i = index[role]
        path = f"/spec/predictors/{i}"
        _set(changes, predictors[i], path, "traffic", share.traffic, 0)
        _set(changes, predictors[i], path, "shadow", share.shadow, False)
    return _finish_v1(current, guards, changes)


def remove_predictor_patch(current: Mapping[str, Any], role: str) -> Patch:
    """A guarded JSON patch removing ``role``'s predictor; ``[]`` if it is already gone.

    Move its traffic away first (:func:`weights_patch` to candidate 0 for a rollback, to
    candidate 100 for a promotion): removing a predictor that still serves traffic would
    leave the rest summing to less than 100, which raises :class:`ManifestError`.
    """
    if role not in ROLES:
        raise ValueError(f"role {role!r} is not one of {', '.join(ROLES)}")
    predictors = _predictors(current)
    names = [p.get("name") for p in predictors]
    if role not in names:
        return []
    i = names.index(role)
    guards = [_resource_version_guard(current, "SeldonDeployment"),
              *_name_guards(predictors, "/spec/predictors")]
    changes: Patch = [{"op": "remove", "path": f"/spec/predictors/{i}"}]
    try:
        return _finish_v1(current, guards, changes)
    except PatchConflict:
        raise
    except ManifestError as exc:
        raise ManifestError(f"removing the {role!r} predictor now would be rejected ({exc}); "
                            "move its traffic to the other predictor first") from None


# --------------------------------------------------------------------------------------
# Seldon v2: Experiment
# --------------------------------------------------------------------------------------


def v2_experiment_patch(current: Mapping[str, Any], weights: Weights) -> Patch:
    """A guarded JSON patch moving the v2 Experiment ``current`` to ``weights``.

    Candidate weights are replaced by index, candidates no longer wanted are removed
    (highest index first, so the others keep their indices), new ones appended, the
    mirror added, replaced or removed, and ``default`` set (it names the candidate while
    baking, the baseline otherwise).
    """
    name = (current.get("metadata") or {}).get("name")
    spec = current.get("spec") or {}
    candidates = spec.get("candidates")
    if not name or not isinstance(candidates, list):
        raise ManifestError("Experiment: metadata.name or spec.candidates missing; is this an "
                            "Experiment kpigate created?")
    wanted, mirror = v2_routing(name, weights)
    known = {v2_model_name(name, role) for role in ROLES}
    strangers = [c.get("name") for c in candidates if c.get("name") not in known]
    if strangers:
        raise ManifestError(f"Experiment {name}: unexpected candidate(s) {strangers}; kpigate "
                            f"manages exactly {sorted(known)}")
    guards = [_resource_version_guard(current, f"Experiment {name}"),
              *_name_guards(candidates, "/spec/candidates")]
    weight_of = {c["name"]: c["weight"] for c in wanted}
    changes: Patch = []
    for i, cand in enumerate(candidates):
        if cand["name"] in weight_of:
            _set(changes, cand, f"/spec/candidates/{i}", "weight", weight_of[cand["name"]], 0)
    for i in reversed(range(len(candidates))):
        if candidates[i]["name"] not in weight_of:
            changes.append({"op": "remove", "path": f"/spec/candidates/{i}"})
    present = {c["name"] for c in candidates}
    changes += [{"op": "add", "path": "/spec/candidates/-", "value": c}
                for c in wanted if c["name"] not in present]
    if mirror is not None:
        if "mirror" not in spec:
            changes.append({"op": "add", "path": "/spec/mirror", "value": mirror})
        elif not json_equal(spec["mirror"], mirror):
            changes.append({"op": "replace", "path": "/spec/mirror", "value": mirror})
    elif "mirror" in spec:
        changes.append({"op": "remove", "path": "/spec/mirror"})
    default = v2_default(name, weights)
    if spec.get("default") != default:
        changes.append({"op": "replace" if "default" in spec else "add",
                        "path": "/spec/default", "value": default})
    ops = guards + changes
    check_experiment_rules(apply_json_patch(current, ops))
    return ops

"""Test helper: validate manifests against Seldon Core's real CRD schemas.

The CRDs are looked up in this order: the directory named by ``KPIGATE_SELDON_CRDS``;
``tests/data/seldon-crds`` (copies committed with the tests, so a fresh clone has them);
the shared checkout directory ``Path(__file__).resolve().parents[2] / "shared" /
"seldon-crds"``.

Kubernetes treats a field that a structural schema does not list as unknown: it is pruned
(or, with strict field validation, rejected), unless the schema says
``x-kubernetes-preserve-unknown-fields``. JSON Schema has no such notion, so
:func:`strict_schema` closes every object schema that lists ``properties`` with
``additionalProperties: false``; validating against it flags the fields Kubernetes would
drop. The ``x-kubernetes-*`` and ``format`` keywords are ignored by jsonschema.
"""

from __future__ import annotations

import copy
import functools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

ENV_OVERRIDE = "KPIGATE_SELDON_CRDS"
REPO_COPY = Path(__file__).resolve().parent / "data" / "seldon-crds"
SHARED_COPY = Path(__file__).resolve().parents[2] / "shared" / "seldon-crds"

#: CRD file per (apiVersion group, kind).
CRD_FILES: dict[str, str] = {
    "SeldonDeployment": "v1.17.1_machinelearning.seldon.io_seldondeployments.yaml",
    "Model": "v2.6.0_mlops.seldon.io_models.yaml",
    "Experiment": "v2.6.0_mlops.seldon.io_experiments.yaml",
}


def crd_dir() -> Path:
    """The directory the CRDs are read from (see the module docstring)."""
    override = os.environ.get(ENV_OVERRIDE)
    if override:
        return Path(override)
    if (REPO_COPY / CRD_FILES["SeldonDeployment"]).is_file():
        return REPO_COPY
    return SHARED_COPY


@functools.cache
def _load_crd(path: str) -> dict[str, Any]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(path, encoding="utf-8") as fh:
        return yaml.load(fh, Loader=loader)


def load_crd(kind: str) -> dict[str, Any]:
    """The parsed CustomResourceDefinition for ``kind`` (a copy; safe to modify)."""
    return copy.deepcopy(_load_crd(str(crd_dir() / CRD_FILES[kind])))


@functools.cache
def _schema(kind: str, directory: str) -> dict[str, Any]:
    crd = _load_crd(str(Path(directory) / CRD_FILES[kind]))
    versions = [v for v in crd["spec"]["versions"] if v.get("served") and v.get("storage")]
    assert len(versions) == 1, f"{kind}: expected one served storage version"
    return versions[0]["schema"]["openAPIV3Schema"]


def crd_schema(kind: str) -> dict[str, Any]:
    """``openAPIV3Schema`` of the served storage version of ``kind``'s CRD (a copy)."""
    return copy.deepcopy(_schema(kind, str(crd_dir())))


def crd_group_version(kind: str) -> str:
    """``group/version`` of ``kind``'s served storage version, e.g. ``mlops.seldon.io/v1alpha1``."""
    crd = load_crd(kind)
    version = next(v["name"] for v in crd["spec"]["versions"]
                   if v.get("served") and v.get("storage"))
    return f"{crd['spec']['group']}/{version}"


def strict_schema(schema: Any) -> Any:
    """``schema`` with unknown fields forbidden wherever Kubernetes would prune them."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if "properties" in schema:  # a map of field name -> schema, not a schema itself
        out["properties"] = {k: strict_schema(v) for k, v in schema["properties"].items()}
    for key in ("items", "additionalProperties", "not"):
        if isinstance(schema.get(key), dict):
            out[key] = strict_schema(schema[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if isinstance(schema.get(key), list):
            out[key] = [strict_schema(s) for s in schema[key]]
    if ("properties" in schema and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@functools.cache
def _validator(kind: str, directory: str, strict: bool) -> jsonschema.Draft7Validator:
    schema = _schema(kind, directory)
    if strict:
        schema = strict_schema(schema)
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def drop_none(value: Any) -> Any:
    """``value`` without ``None`` members (Kubernetes treats them as absent)."""
    if isinstance(value, Mapping):
        return {k: drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [drop_none(v) for v in value if v is not None]
    return value


def schema_errors(manifest: Mapping[str, Any], *, strict: bool = True) -> list[str]:
    """Every schema violation of ``manifest`` (its ``kind`` picks the CRD), one line each."""
    kind = manifest.get("kind")
    if kind not in CRD_FILES:
        return [f"kind: {kind!r} is not one of {sorted(CRD_FILES)}"]
    problems = []
    if manifest.get("apiVersion") != crd_group_version(kind):
        problems.append(f"apiVersion: {manifest.get('apiVersion')!r}, the CRD serves "
                        f"{crd_group_version(kind)!r}")
    validator = _validator(kind, str(crd_dir()), strict)
    for error in sorted(validator.iter_errors(drop_none(manifest)), key=lambda e: list(e.path)):
        where = ".".join(str(p) for p in error.absolute_path) or "(root)"
        problems.append(f"{where}: {error.message}")
    return problems


def assert_valid(manifest: Mapping[str, Any], *, strict: bool = True) -> None:
    """Fail the test with every schema violation of ``manifest``."""
    problems = schema_errors(manifest, strict=strict)
    assert not problems, "\n".join(problems)

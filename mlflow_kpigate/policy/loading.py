"""Reading a policy: ``load_policy`` for files, ``policy_from_dict`` for parsed documents.

``policy_from_dict`` runs the section validators in document order and raises one
:class:`~mlflow_kpigate.core.errors.PolicyError` listing every problem they found.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from mlflow_kpigate.core.errors import PolicyError
from mlflow_kpigate.policy.bake import validate_bake
from mlflow_kpigate.policy.kpis import validate_kpis
from mlflow_kpigate.policy.metrics import validate_metrics
from mlflow_kpigate.policy.model import (
    Bake,
    ControlLimits,
    MetricsConfig,
    Policy,
    Readiness,
    Stage,
)
from mlflow_kpigate.policy.problems import Problems, as_name, type_name
from mlflow_kpigate.policy.sections import (
    validate_alerts,
    validate_control_limits,
    validate_evaluation,
    validate_readiness,
)
from mlflow_kpigate.policy.stages import validate_stages
from mlflow_kpigate.policy.yaml_text import PolicyYamlError, parse_policy_yaml

_TOP_KEYS = ("version", "name", "evaluation", "stages", "stage_defaults", "kpis", "control_limits",
             "alerts", "metrics", "readiness", "bake")


def policy_from_dict(data: Any, source: str | None = None) -> Policy:
    """Validate a parsed policy document; raise ``PolicyError`` listing every problem."""
    p = Problems()
    if not isinstance(data, Mapping):
        raise PolicyError([f"the policy must be a YAML mapping, got {type_name(data)}"], source)
    if data and not any(str(k) in _TOP_KEYS or difflib.get_close_matches(str(k), _TOP_KEYS, n=1)
                        for k in data):
        # Another kind of file (a passwd-like table, some other tool's config): one line,
        # not a problem per key.
        raise PolicyError([f"is not a rollout policy (none of its {len(data)} top-level keys "
                           "is a policy field such as stages or kpis); give a policy YAML, "
                           "see docs/policy.md"], source)
    p.unknown_keys("", data, _TOP_KEYS)
    version = data.get("version", 1)
    if isinstance(version, bool) or version != 1:
        p.add("version", f"only version 1 is supported, got {version!r}")
    name = data.get("name")
    if name is not None:
        name = as_name(p, "name", name)

    evaluation = validate_evaluation(p, data.get("evaluation", {}))
    control = (ControlLimits() if data.get("control_limits") is None
               else validate_control_limits(p, data["control_limits"]))
    alerts = None if data.get("alerts") is None else validate_alerts(p, data["alerts"])

    if "stages" not in data:
        p.add("stages", "is required (e.g. 'shadow,5,25,50,100' or a list of stages)")
        stages: tuple[Stage, ...] = ()
    else:
        stages = validate_stages(p, data["stages"], data.get("stage_defaults"))

    raw_kpis = data.get("kpis")
    kpis = validate_kpis(p, raw_kpis)
    metrics = MetricsConfig()
    if data.get("metrics") is not None:
        # Only names that can be names: a list or mapping there is already a problem of
        # its KPI, and would not hash.
        raw_names = {k.get("name") for k in raw_kpis if isinstance(k, Mapping)
                     and isinstance(k.get("name"), str)} if isinstance(raw_kpis, list) else set()
        metrics = validate_metrics(p, data["metrics"], kpis, raw_names)
    readiness = Readiness()
    if data.get("readiness") is not None:
        readiness = validate_readiness(p, data["readiness"])
    bake = Bake()
    if data.get("bake") is not None:
        interval_ok = not any(i.startswith("evaluation.interval") for i in p.items)
        bake = validate_bake(p, data["bake"], kpis,
                             evaluation.interval if interval_ok else None)
    if p.items:
        raise PolicyError(p.items, source)
    return Policy(
        stages=stages,
        kpis=tuple(kpis),
        evaluation=evaluation,
        control_limits=control,
        alerts=alerts,
        name=name,
        version=1,
        source=source,
        metrics=metrics,
        readiness=readiness,
        bake=bake,
        raw=dict(data),
    )


def load_policy(path: str | Path, *, override: Callable[[dict[str, Any]], None] | None = None
                ) -> Policy:
    """Read and validate a policy file. ``override`` may edit the parsed document first."""
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyError(["file not found; check the path"], source) from None
    except IsADirectoryError:
        raise PolicyError(["is a directory; give the policy YAML file"], source) from None
    except UnicodeDecodeError:
        raise PolicyError(["is not a text (UTF-8) file; give the policy YAML file"],
                          source) from None
    except OSError as exc:
        raise PolicyError([f"cannot be read ({exc.strerror or exc}); check the path and its "
                           "permissions"], source) from None
    try:
        data = parse_policy_yaml(text)
    except PolicyYamlError as exc:
        raise PolicyError([f"line {exc.line}: {exc.message}"], source) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise PolicyError([f"{where}not valid YAML ({problem})"], source) from None
    if data is None:
        raise PolicyError(["is empty; see examples/policies/fraud.yaml"], source)
    if override is not None and isinstance(data, dict):
        override(data)
    return policy_from_dict(data, source)

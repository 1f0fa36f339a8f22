"""``-o/--output text|json|yaml``: how the commands that show something print it.

``kpigate status``, ``list`` and ``replay`` take ``-o json`` or ``-o yaml`` (their older
``--json`` flag stays, the same as ``-o json``) and print one document: the same keys in
the same order every time, strict JSON (a number that is not finite is ``null``), YAML of
the same data. :func:`status_document` is the document of one rollout that ``status`` prints
and that ``list`` prints one of per rollout; its keys are described in
docs/deployment.md#machine-readable-output. With ``status --watch`` a document is printed
at each change: JSON one per line, YAML as a stream of ``---`` documents.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast

import click
import yaml

from mlflow_kpigate.cli.operate import stage_label
from mlflow_kpigate.core.decision import Decision
from mlflow_kpigate.core.errors import KpigateError
from mlflow_kpigate.deploy.deployer import Deployer
from mlflow_kpigate.policy import Policy

__all__ = ["FORMATS", "dump", "dump_line", "output_option", "status_document"]

FORMATS = ("text", "json", "yaml")
F = TypeVar("F", bound=Callable[..., Any])
#: YAML lines are not folded: a reason stays on one line, as in JSON.
_UNWRAPPED = 1 << 30


def output_option(what: str) -> Callable[[F], F]:
    """``-o/--output FORMAT`` and its alias ``--json``; the command gets ``output``
    (``text``, ``json`` or ``yaml``). ``what`` names what the document holds (for help)."""
    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, output: str, as_json: bool, **kwargs: Any) -> Any:
            if as_json and output not in ("text", "json"):
                raise click.UsageError(f"--json and -o {output}: give one of them")
            return func(*args, output="json" if as_json else output, **kwargs)

        wrapper = click.option("--json", "as_json", is_flag=True,
                               help="Same as -o json (kept for scripts).")(wrapper)
        wrapper = click.option("-o", "--output", type=click.Choice(FORMATS), default="text",
                               show_default=True,
                               help=f"Print {what} as text, JSON or YAML "
                                    "(docs/deployment.md#machine-readable-output)."
                               )(wrapper)
        return cast(F, wrapper)

    return decorate


def _strict(value: Any) -> Any:
    """JSON-ready data: non-finite numbers as None, tuples as lists, keys as text."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)  # a path, an enum: as text


def _yaml(clean: Any) -> str:
    return yaml.safe_dump(clean, sort_keys=False, allow_unicode=True,
                          width=_UNWRAPPED).rstrip("\n")


def dump(data: Any, fmt: str) -> str:
    """``data`` as an indented JSON document or a YAML document (no trailing newline)."""
    clean = _strict(data)
    if fmt == "yaml":
        return _yaml(clean)
    return json.dumps(clean, indent=2, ensure_ascii=False, allow_nan=False)


def dump_line(data: Any, fmt: str) -> str:
    """One document of a stream: JSON on one line, YAML after a ``---`` line."""
    clean = _strict(data)
    if fmt == "yaml":
        return "---\n" + _yaml(clean)
    return json.dumps(clean, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def status_document(deployer: Deployer, name: str, config: Mapping[str, Any] | None,
                    info: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Rollout ``name`` as ``status -o json`` prints it: what ``describe`` gives (the
    deployment as ``mlflow deployments get`` shows it), with ``stage`` (the stage's label)
    and ``traffic`` (the weights as numbers) for either backend, and ``last_decision``."""
    doc = dict(info if info is not None else deployer.describe(name, config))
    traffic: dict[str, Any] | None = None
    decision: Decision | None = None
    policy: Policy | None = None
    try:
        rollout = deployer.open(name, config)
        policy = rollout.policy
        state = rollout.store.load()
        if state is not None:
            traffic = state.weights.to_dict()
            traffic.setdefault("baseline_shadow", False)
            decision = Decision.from_dict(state.last_decision) if state.last_decision \
                else None
    except KpigateError:
        pass  # e.g. a ModelRollout the operator has not acted on yet: describe says so
    doc["stage"] = stage_label(doc, policy)
    doc["traffic"] = traffic
    doc["last_decision"] = decision.to_dict() if decision is not None else None
    return doc

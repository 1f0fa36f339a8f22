"""Policies derived from a given one for comparisons: the same rollout with a shadow stage first.

The benchmark's ``kpigate_shadow`` rule is the gate on :func:`with_shadow_stage` of the
benchmark policy. The shadow stage copies the first canary stage's settings
(``min_samples``, ``min_dwell``, ``max_duration``, ``on_timeout``,
``promote_margin_scale``): the only change is where the rollout starts, so the comparison
shows what scoring every request in shadow before any user sees the candidate buys. In
shadow the candidate scores a copy of every request; the runner draws both roles'
outcomes on those requests jointly (:mod:`.paired_stream`) and hands the gate the
stratum's paired part, so it compares the roles with paired variances there.

The derived policy is built from the raw document and validated like a user's file, so it
is a policy someone could write (its ``raw`` is the document it came from).
"""

from __future__ import annotations

from typing import Any

from mlflow_kpigate.policy import Policy, Stage, parse_stage_shortcut, policy_from_dict

SHADOW_NAME = "shadow"


def shadow_stage_document(first: Stage) -> dict[str, Any]:
    """The shadow stage's mapping: the first stage's settings, serving no traffic."""
    doc: dict[str, Any] = {
        "name": SHADOW_NAME,
        "shadow": True,
        "min_samples": {"requests": first.min_samples.requests,
                        "labelled": first.min_samples.labelled},
        "min_dwell": first.min_dwell,
        "on_timeout": first.on_timeout.value,
        "promote_margin_scale": first.promote_margin_scale,
    }
    if first.max_duration is not None:
        doc["max_duration"] = first.max_duration
    return doc


def with_shadow_stage(policy: Policy) -> Policy:
    """``policy`` with a shadow stage before its first stage (itself if it has one)."""
    if policy.stages[0].shadow:
        return policy
    if not policy.raw:
        raise ValueError("the policy has no raw document to derive a shadow-first one from")
    raw = dict(policy.raw)
    stages: Any = raw.get("stages")
    if isinstance(stages, str):
        stages = parse_stage_shortcut(stages)
    if not isinstance(stages, list):
        raise ValueError("the policy's stages are neither a list nor a shortcut string")
    raw["stages"] = [shadow_stage_document(policy.stages[0]), *stages]
    if raw.get("name"):
        raw["name"] = f"{raw['name']}-shadow-first"
    return policy_from_dict(raw, source=policy.source)

"""``kpigate render``: the Seldon objects and JSON patches of a rollout, without a cluster.

Prints a YAML stream: the manifests the first stage creates, then the guarded JSON patch
of every stage transition (the last one is the promotion: all traffic to the candidate,
then the baseline predictor removed), then the two rollback patches from every evaluated
stage (all traffic to the baseline, then the candidate removed). With a ``bake`` in the
policy the promotion is the bake's start (the candidate at 100, the baseline its shadow),
followed by the patches that end the bake (promoted) and those of a rollback after
promotion. Each document starts with a ``#`` comment saying which step it is. Every
manifest and every patch result is checked against Seldon's admission rules on the way,
so a policy Seldon cannot follow (e.g. a 2.5 % stage) fails here with exit code 2
instead of in the cluster.

The patches' ``test`` operations need the object's ``metadata.resourceVersion``; render
simulates the API server, which sets it to ``"1"`` on create and bumps it on every
change, so the values shown are placeholders for the ones the cluster reports.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import yaml

from mlflow_kpigate.backends.seldon.collector_credentials import INGEST_TOKEN_ENV
from mlflow_kpigate.backends.seldon.manifests import (
    BASELINE,
    CANDIDATE,
    ModelRef,
    check_model_uri_scheme,
    seldon_deployment,
    v2_experiment,
    v2_model_name,
    v2_models,
    whole_percent,
)
from mlflow_kpigate.backends.seldon.patches import (
    Patch,
    apply_json_patch,
    remove_predictor_patch,
    v2_experiment_patch,
    weights_patch,
)
from mlflow_kpigate.backends.seldon.target import SeldonTarget, parse_target_uri
from mlflow_kpigate.backends.seldon.webhook import check_experiment_rules, check_webhook_rules
from mlflow_kpigate.cli.errors import fail
from mlflow_kpigate.core.durations import format_duration
from mlflow_kpigate.core.errors import KpigateError, UsageError
from mlflow_kpigate.core.state import Weights
from mlflow_kpigate.deploy.config import parse_config
from mlflow_kpigate.deploy.seldon_rollout import seldon_target
from mlflow_kpigate.policy import Policy, Stage, load_policy
from mlflow_kpigate.rollout.transitions import stage_weights


@dataclass(frozen=True)
class Document:
    """One YAML document of the output: what it is (``comment``) and its content."""

    comment: str
    body: Any


class _SimulatedObject:
    """One object as the API server would hold it: patched in place, resourceVersion bumped."""

    def __init__(self, manifest: dict[str, Any]) -> None:
        self.version = 1
        self.doc = copy.deepcopy(manifest)
        self.doc["metadata"]["resourceVersion"] = str(self.version)

    def patch(self, ops: Patch) -> None:
        self.doc = apply_json_patch(self.doc, ops)
        if ops:
            self.version += 1
            self.doc["metadata"]["resourceVersion"] = str(self.version)

    def fork(self) -> _SimulatedObject:
        other = copy.copy(self)
        other.doc = copy.deepcopy(self.doc)
        return other


def _stage_label(stage: Stage) -> str:
    return stage.describe()


def check_stages_for_seldon(policy: Policy) -> None:
    """``UsageError`` naming the first stage whose percent Seldon cannot route."""
    for i, stage in enumerate(policy.stages):
        if stage.shadow:
            continue
        try:
            whole_percent(stage.traffic)
        except UsageError as exc:
            raise UsageError(f"stages[{i}].traffic: {str(exc).removeprefix('stages: ')}"
                             ) from None


def _v1_bake(kind: str, live: _SimulatedObject) -> Iterator[Document]:
    """From a baking SeldonDeployment: the bake's end, and a rollback after promotion."""
    back = live.fork()
    ops = weights_patch(live.doc, Weights(100.0))
    live.patch(ops)
    yield Document(f"bake ends without a regression (promoted), step 1 of 2: the baseline's "
                   f"shadow stops: kubectl patch {kind} --type json", ops)
    ops = remove_predictor_patch(live.doc, BASELINE)
    yield Document(f"bake ends, step 2 of 2: remove the baseline predictor: kubectl patch "
                   f"{kind} --type json", ops)
    ops = weights_patch(back.doc, Weights.baseline_only())
    back.patch(ops)
    yield Document(f"rollback after promotion (a regression during the bake), step 1 of 2: "
                   f"all traffic to the baseline: kubectl patch {kind} --type json", ops)
    ops = remove_predictor_patch(back.doc, CANDIDATE)
    yield Document(f"rollback after promotion, step 2 of 2: remove the candidate predictor: "
                   f"kubectl patch {kind} --type json", ops)


def _v1_documents(target: SeldonTarget, baseline: ModelRef, candidate: ModelRef,
                  stages: tuple[Stage, ...], bake: bool = False) -> Iterator[Document]:
    kind = f"seldondeployment {target.name} -n {target.namespace}"
    first = stages[0]
    manifest = seldon_deployment(target, baseline, candidate, stage_weights(first))
    check_webhook_rules(manifest)
    yield Document(f"create at stage 1 ({_stage_label(first)}): kubectl apply -f -", manifest)
    live = _SimulatedObject(manifest)
    at_stage: list[_SimulatedObject] = [live.fork()]
    for i in range(1, len(stages)):
        before, stage = stages[i - 1], stages[i]
        weights = Weights.baking() if stage.is_final and bake else stage_weights(stage)
        ops = weights_patch(live.doc, weights)
        live.patch(ops)
        step = f"stage {i + 1}: {_stage_label(before)} -> {_stage_label(stage)}"
        if stage.is_final and bake:
            yield Document(f"{step} (promotion: the candidate serves everything, the baseline "
                           f"is its shadow during the bake): kubectl patch {kind} --type json",
                           ops)
            yield from _v1_bake(kind, live)
        elif stage.is_final:
            yield Document(f"{step} (promotion, step 1 of 2: all traffic to the candidate): "
                           f"kubectl patch {kind} --type json", ops)
            ops = remove_predictor_patch(live.doc, BASELINE)
            live.patch(ops)
            yield Document(f"promotion, step 2 of 2: remove the baseline predictor once "
                           f"Seldon reports it Available: kubectl patch {kind} --type json", ops)
        else:
            yield Document(f"{step}: kubectl patch {kind} --type json", ops)
            at_stage.append(live.fork())
    for i, state in enumerate(at_stage):
        label = _stage_label(stages[i])
        ops = weights_patch(state.doc, Weights.baseline_only())
        state.patch(ops)
        yield Document(f"rollback from stage {i + 1} ({label}), step 1 of 2: all traffic to "
                       f"the baseline: kubectl patch {kind} --type json", ops)
        ops = remove_predictor_patch(state.doc, CANDIDATE)
        yield Document(f"rollback from stage {i + 1} ({label}), step 2 of 2: remove the "
                       f"candidate predictor: kubectl patch {kind} --type json", ops)


def _v2_documents(target: SeldonTarget, baseline: ModelRef, candidate: ModelRef,
                  stages: tuple[Stage, ...], bake: bool = False) -> Iterator[Document]:
    kind = f"experiment {target.name} -n {target.namespace}"
    for model in v2_models(target, baseline, candidate):
        yield Document(f"Model {model['metadata']['name']}: kubectl apply -f -", model)
    first = stages[0]
    experiment = v2_experiment(target, stage_weights(first))
    check_experiment_rules(experiment)
    yield Document(f"create at stage 1 ({_stage_label(first)}): kubectl apply -f -", experiment)
    live = _SimulatedObject(experiment)
    at_stage: list[_SimulatedObject] = [live.fork()]
    candidate_model = v2_model_name(target.name, CANDIDATE)
    baked: _SimulatedObject | None = None
    for i in range(1, len(stages)):
        before, stage = stages[i - 1], stages[i]
        weights = Weights.baking() if stage.is_final and bake else stage_weights(stage)
        ops = v2_experiment_patch(live.doc, weights)
        live.patch(ops)
        step = f"stage {i + 1}: {_stage_label(before)} -> {_stage_label(stage)}"
        if stage.is_final and bake:
            step += (" (promotion: all traffic to the candidate, mirrored to the baseline "
                     "during the bake)")
            baked = live.fork()
        elif stage.is_final:
            step += " (promotion: all traffic to the candidate)"
        else:
            at_stage.append(live.fork())
        yield Document(f"{step}: kubectl patch {kind} --type json", ops)
    if baked is not None:
        yield Document(f"bake ends without a regression (promoted): the mirror stops: "
                       f"kubectl patch {kind} --type json",
                       v2_experiment_patch(baked.doc, Weights(100.0)))
        yield Document(f"rollback after promotion (a regression during the bake): all traffic "
                       f"to the baseline: kubectl patch {kind} --type json; then kubectl "
                       f"delete model {candidate_model} -n {target.namespace}",
                       v2_experiment_patch(baked.doc, Weights.baseline_only()))
    for i, state in enumerate(at_stage):
        ops = v2_experiment_patch(state.doc, Weights.baseline_only())
        yield Document(
            f"rollback from stage {i + 1} ({_stage_label(stages[i])}): all traffic to the "
            f"baseline: kubectl patch {kind} --type json; then kubectl delete model "
            f"{candidate_model} -n {target.namespace}", ops)


def render_documents(target: SeldonTarget, baseline: ModelRef, candidate: ModelRef,
                     policy: Policy) -> list[Document]:
    """Every document ``kpigate render`` prints, in order (see the module docstring)."""
    check_stages_for_seldon(policy)
    build = _v1_documents if target.seldon_version == 1 else _v2_documents
    return list(build(target, baseline, candidate, policy.stages, policy.bake.enabled))


def format_documents(header: list[str], documents: list[Document]) -> str:
    """A YAML stream: ``header`` as comments, then each document after ``---``."""
    lines = [f"# {line}" for line in header]
    for doc in documents:
        lines.append("---")
        lines.append(f"# {doc.comment}")
        lines.append(yaml.safe_dump(doc.body, sort_keys=False, default_flow_style=False)
                     .rstrip("\n"))
    return "\n".join(lines) + "\n"


def _model(role: str, uri: str, resolve: Callable[[str], Any]) -> ModelRef:
    text = uri.strip()
    if text.startswith("models:/"):
        return ModelRef.from_registry(resolve(text))
    if text.startswith("runs:/"):
        raise UsageError(f"{role} {uri}: a runs:/ URI is not registered; give models:/NAME/V "
                         "or the model's storage URI (s3://…, gs://…)")
    return ModelRef(version="", storage_uri=text)


def _pairs(pairs: tuple[str, ...]) -> dict[str, str]:
    config: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise UsageError(f"-C {pair}: write KEY=VALUE")
        config[key.strip()] = value
    return config


def _policy(policy_file: str | None, cfg_policy: Path | None, stages: tuple[str, ...],
            cfg_stages: str | None) -> Policy:
    from mlflow_kpigate.deploy.inputs import default_policy_path

    if policy_file and cfg_policy:
        raise UsageError("--policy and -C policy: give the policy once")
    if stages and cfg_stages:
        raise UsageError("--stage and -C stages: give the stages once")
    shortcut = ",".join(stages) if stages else cfg_stages
    source = Path(policy_file) if policy_file else (cfg_policy or default_policy_path())

    def override(doc: dict[str, Any]) -> None:
        if shortcut:
            doc["stages"] = shortcut

    return load_policy(source, override=override)


def _render(target_uri: str, name: str, model_uri: str, baseline_uri: str | None,
            stages: tuple[str, ...], policy_file: str | None, pairs: tuple[str, ...],
            tracking_uri: str | None, service_account: str | None) -> None:
    cfg = parse_config(_pairs(pairs))
    if baseline_uri and cfg.baseline and baseline_uri != cfg.baseline:
        raise UsageError("--baseline-uri and -C baseline differ; give the baseline once")
    baseline_uri = baseline_uri or cfg.baseline
    if not baseline_uri:
        raise UsageError("--baseline-uri: missing; give the serving model, as models:/NAME/V "
                         "or its storage URI")
    target = seldon_target(parse_target_uri(target_uri), name, cfg, service_account)
    policy = _policy(policy_file, cfg.policy, stages, cfg.stages)
    registry: Any = None

    def resolve(uri: str) -> Any:
        nonlocal registry
        if registry is None:
            from mlflow_kpigate.registry import Registry

            registry = Registry(tracking_uri)
        return registry.resolve(uri)

    candidate = _model("--model-uri", model_uri, resolve)
    baseline = _model("--baseline-uri", baseline_uri, resolve)
    for role, model in (("candidate", candidate), ("baseline", baseline)):
        warning = check_model_uri_scheme(model.storage_uri)
        if warning:
            click.echo(f"warning: {role} {model.storage_uri}: {warning}", err=True)
    documents = render_documents(target, baseline, candidate, policy)
    api = "v1 (SeldonDeployment)" if target.seldon_version == 1 else "v2 (Model + Experiment)"
    header = [
        f"kpigate render: rollout {target.name} in namespace {target.namespace}, "
        f"Seldon Core {api}",
        "stages: " + " -> ".join(_stage_label(s) for s in policy.stages)
        + (f", then a {format_duration(policy.bake.duration)} bake" if policy.bake.enabled
           else ""),
        f"baseline: {baseline_uri} = {baseline.storage_uri}",
        f"candidate: {model_uri} = {candidate.storage_uri}",
        "patches are RFC 6902 JSON patches; their resourceVersion tests show simulated "
        "values - kpigate uses the ones the cluster reports",
    ]
    if target.logger_url:
        header.append(f"request logger: {target.logger_url}/<ingest token> when applied "
                      f"with ${INGEST_TOKEN_ENV} (tokens are never printed)")
    click.echo(format_documents(header, documents), nl=False)


@click.command("render")
@click.option("-t", "--target", "target_uri", required=True, metavar="kpigate:/seldon/NS",
              help="Seldon target, kpigate:/seldon/NAMESPACE.")
@click.option("--name", required=True, help="Deployment name (names the Seldon objects).")
@click.option("-m", "--model-uri", required=True,
              help="Candidate: models:/NAME/V, models:/NAME@ALIAS or a storage URI.")
@click.option("--baseline-uri", help="Baseline, as --model-uri (or -C baseline=models:/…).")
@click.option("--stage", "stages", multiple=True, metavar="shadow|PERCENT",
              help="Replace the policy's stages; repeat or comma-separate, e.g. "
                   "--stage shadow,5,25,50,100.")
@click.option("--policy", "policy_file", type=click.Path(),
              help="Rollout policy YAML (default: the packaged default policy).")
@click.option("-C", "--config", "pairs", multiple=True, metavar="KEY=VALUE",
              help="Deployment config, as for mlflow deployments -C (seldon_version, "
                   "env_secret, collector_url, replicas, …).")
@click.option("--tracking-uri", help="MLflow tracking URI for models:/ URIs "
                                     "(default: MLFLOW_TRACKING_URI).")
@click.option("--service-account", help="Service account of the model pods.")
def render_command(target_uri: str, name: str, model_uri: str, baseline_uri: str | None,
                   stages: tuple[str, ...], policy_file: str | None, pairs: tuple[str, ...],
                   tracking_uri: str | None, service_account: str | None) -> None:
    """Print the Seldon manifests and JSON patches of a rollout, without a cluster."""
    try:
        _render(target_uri, name, model_uri, baseline_uri, stages, policy_file, pairs,
                tracking_uri, service_account)
    except KpigateError as exc:
        fail(exc)

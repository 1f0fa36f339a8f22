"""MLflow registry and tracking: resolve model versions, read baseline KPIs, write tags,
aliases, and the rollout run with its per-evaluation metrics and artifacts.

Everything that talks to MLflow goes through :class:`Registry`; the gate, the controller
and the report never import ``mlflow`` themselves. It works with the default local store
(``sqlite:///…/mlflow.db``) and with a tracking server (``http://host:port``), through one
``MlflowClient`` whose registry URI is the tracking URI.

Model URIs
    ``models:/NAME/VERSION`` and ``models:/NAME@ALIAS`` are accepted and resolved to a
    :class:`ModelRef` (canonical ``models:/NAME/VERSION``). A bare ``models:/NAME`` is a
    LoggedModel id in MLflow 3, stage URIs (``models:/NAME/Production``) use the deprecated
    stages, and ``models:/NAME/latest`` changes under a running rollout: all three are
    rejected with a one-line :class:`~mlflow_kpigate.core.errors.UsageError` saying what to give.

Baseline KPIs (:meth:`Registry.baseline_kpis`)
    Two kinds of values describe the baseline version, and they are not pooled:

    * *live* values: the final ``baseline.<kpi>`` metric of earlier kpigate rollout runs
      that served this version as the baseline, and the final ``candidate.<kpi>`` of the
      rollout that promoted it (experiment ``kpigate-rollouts``, finished or killed runs,
      the 50 most recent of each kind);
    * *offline* values: the version's training run metric (``kpi.registry_metric`` or the
      KPI's name) with its history over steps (``get_metric_history``), e.g. one value per
      validation window or fold.

    Live values win when there are at least two of them, because the gate compares the
    candidate's *live* KPI with μ ∓ kσ and offline (validation-set) metrics can differ
    systematically from live ones; otherwise the offline history wins when it has at least
    two values (σ needs two); otherwise a single value is used (live first) with σ None, so
    no control limit is drawn from it. ``n`` is the number of values behind μ and σ (σ is
    the sample standard deviation). The run metric ``prevalence``, when logged as a
    fraction, becomes the baseline's prevalence for planning.

Errors
    A registered model, version or alias that does not exist is a ``UsageError`` naming it.
    Any other failure talking to MLflow (server down, database unreadable) is a
    :class:`~mlflow_kpigate.core.errors.KpigateError` whose one-line message names the tracking
    URI and the operation. Retries are MLflow's own: its HTTP client retries failed
    requests with exponential backoff per ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` (default 7),
    ``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR`` (2) and ``MLFLOW_HTTP_REQUEST_TIMEOUT`` (120 s),
    which rides out a server restart but means an unreachable server takes minutes to be
    reported; set ``MLFLOW_HTTP_REQUEST_MAX_RETRIES=0`` (or a small number) to fail fast.
    No retries or sleeps are added here.
"""

from __future__ import annotations

import json
import math
import re
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import mlflow
from mlflow.entities import Metric, Param, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mlflow_kpigate.core.baseline import BaselineKpi, RegistryBaseline
from mlflow_kpigate.core.decision import Action, Decision
from mlflow_kpigate.core.errors import KpigateError, UsageError
from mlflow_kpigate.core.evaluation import Evaluation
from mlflow_kpigate.core.refs import ModelRef
from mlflow_kpigate.policy import Policy

#: The experiment that holds one run per rollout.
ROLLOUT_EXPERIMENT = "kpigate-rollouts"
#: Tag prefix of everything kpigate writes.
TAG_PREFIX = "kpigate."
#: Longest tag value written. MLflow 3 accepts 100,000 characters for model-version tags,
#: but servers created by MLflow 2 stored them in a VARCHAR(5000) column; 5000 is safe for
#: both. Longer values are cut and end with ``…``.
MAX_TAG_VALUE = 5000
#: Longest run parameter value MLflow accepts.
MAX_PARAM_VALUE = 6000
#: How many earlier rollout runs of each kind are read for a baseline.
MAX_ROLLOUT_RUNS = 50
#: Run artifact directory of the evaluation records (inputs and decision).
EVALUATIONS_DIR = "evaluations"
#: ``decision.code`` metric per action.
DECISION_CODES: Mapping[Action, int] = {Action.PROMOTE: 1, Action.HOLD: 0, Action.ROLLBACK: -1}

_STAGES = {"production", "staging", "archived", "none"}
_LOGGED_MODEL_SOURCE = re.compile(r"^models:/(m-[0-9a-fA-F]+)/?$")
_MAX_METRICS_PER_BATCH = 1000  # MLflow's log_batch limit
_MAX_PARAMS_PER_BATCH = 100

T = TypeVar("T")


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def truncate(value: str, limit: int = MAX_TAG_VALUE) -> str:
    """``value`` cut to at most ``limit`` characters, ending with ``…`` when cut."""
    value = str(value)
    if len(value) <= limit:
        return value
    return value[: limit - 1] + "…"


def _finite(values: Sequence[float]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def _summary(values: Sequence[float]) -> BaselineKpi:
    std = statistics.stdev(values) if len(values) > 1 else None
    return BaselineKpi(mean=statistics.fmean(values), std=std, n=len(values))


def _is_not_found(exc: MlflowException) -> bool:
    return exc.error_code == "RESOURCE_DOES_NOT_EXIST"


def _exception_chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _is_connection_error(exc: BaseException) -> bool:
    try:
        import requests
        conn_types: tuple[type[BaseException], ...] = (requests.exceptions.ConnectionError,
                                                       ConnectionError)
    except ImportError:  # pragma: no cover - requests comes with mlflow
        conn_types = (ConnectionError,)
    markers = ("Max retries exceeded", "Connection refused", "Failed to establish",
               "Connection aborted", "Name or service not known")
    for item in _exception_chain(exc):
        if isinstance(item, conn_types) or any(m in str(item) for m in markers):
            return True
    return False


def _first_line(text: str, limit: int = 300) -> str:
    line = next((s.strip() for s in str(text).splitlines() if s.strip()), "")
    return truncate(line, limit)


class Registry:
    """kpigate's view of one MLflow tracking server / registry (see the module docstring).

    ``tracking_uri`` defaults to MLflow's own resolution (``MLFLOW_TRACKING_URI`` or
    ``sqlite:///mlflow.db``); the registry URI is the same. Nothing is contacted until the
    first call, so a malformed model URI is reported without touching the store.
    """

    def __init__(self, tracking_uri: str | None = None) -> None:
        self.tracking_uri: str = tracking_uri or mlflow.get_tracking_uri()
        self._client: MlflowClient | None = None

    @property
    def client(self) -> MlflowClient:
        """The ``MlflowClient``, created on first use (a bad URI is reported then)."""
        if self._client is None:
            with self._mlflow("open the tracking store"):
                self._client = MlflowClient(tracking_uri=self.tracking_uri,
                                            registry_uri=self.tracking_uri)
        return self._client

    # -- error handling -----------------------------------------------------------------
    def _failure(self, what: str, exc: BaseException) -> KpigateError:
        if _is_connection_error(exc):
            detail = ("cannot connect; is the tracking server running and "
                      "MLFLOW_TRACKING_URI right?")
        else:
            detail = _first_line(getattr(exc, "message", None) or str(exc)
                                 or type(exc).__name__)
        return KpigateError(f"MLflow at {self.tracking_uri}: could not {what}: {detail}")

    @contextmanager
    def _mlflow(self, what: str) -> Iterator[None]:
        """Turn MLflow/transport failures into a one-line ``KpigateError``."""
        try:
            yield
        except KpigateError:
            raise
        except (MlflowException, OSError) as exc:
            raise self._failure(what, exc) from exc
        except Exception as exc:  # requests/sqlalchemy errors that MLflow lets through
            module = type(exc).__module__.split(".")[0]
            if module in ("requests", "urllib3", "sqlalchemy", "sqlite3"):
                raise self._failure(what, exc) from exc
            raise

    def _call(self, what: str, fn: Callable[..., T], *args: Any,
              not_found: Callable[[], KpigateError] | None = None, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)``; a not-found error becomes ``not_found()`` if given."""
        with self._mlflow(what):
            try:
                return fn(*args, **kwargs)
            except MlflowException as exc:
                if not_found is not None and _is_not_found(exc):
                    raise not_found() from None
                raise

    # -- model versions -----------------------------------------------------------------
    def resolve(self, uri: str) -> ModelRef:
        """Resolve ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``; ``UsageError`` otherwise."""
        name, version, alias = self._parse(uri)
        model = self._call(f"read registered model {name!r}", self.client.get_registered_model,
                           name, not_found=lambda: UsageError(
                               f"{uri}: no registered model named {name!r} at "
                               f"{self.tracking_uri}; check the name (registered models are "
                               "listed in the MLflow UI under Models)"))
        if alias is not None:
            aliases = dict(getattr(model, "aliases", None) or {})
            if alias not in aliases:
                known = ", ".join(sorted(aliases)) or "none"
                raise UsageError(f"{uri}: registered model {name!r} has no alias {alias!r} "
                                 f"(its aliases: {known}); set it with MlflowClient()."
                                 f"set_registered_model_alias({name!r}, {alias!r}, VERSION) "
                                 "or give models:/NAME/VERSION")
            version = str(aliases[alias])
        assert version is not None
        return self._version_ref(uri, name, version)

    def _parse(self, uri: str) -> tuple[str, str | None, str | None]:
        """(name, version, alias) of a registered-model URI; ``UsageError`` when unusable."""
        text = str(uri).strip()
        hint = "give models:/NAME/VERSION or models:/NAME@ALIAS"
        if not text.startswith("models:/"):
            scheme = text.split(":", 1)[0] + ":" if ":" in text else "no scheme"
            raise UsageError(f"{uri}: not a registered-model URI ({scheme}); {hint}")
        rest = text[len("models:/"):].strip("/")
        if not rest:
            raise UsageError(f"{uri}: no model name; {hint}")
        if "@" in rest:
            name, alias = rest.rsplit("@", 1)
            if not name or not alias or "/" in alias or "/" in name:
                raise UsageError(f"{uri}: malformed alias URI; {hint}")
            return name, None, alias
        if "/" not in rest:
            raise UsageError(f"{uri}: in MLflow 3 models:/{rest} names a LoggedModel id, not "
                             f"a registered version; {hint}")
        name, suffix = rest.split("/", 1)
        if "/" in suffix:
            raise UsageError(f"{uri}: a registered-model URI has no path after the version; "
                             f"{hint}")
        if suffix.lower() in _STAGES:
            raise UsageError(f"{uri}: stages are deprecated in MLflow; use an alias "
                             f"(models:/{name}@champion) or a version (models:/{name}/3)")
        if suffix.lower() == "latest":
            raise UsageError(f"{uri}: 'latest' changes while a rollout runs; give the version "
                             f"number or an alias (models:/{name}@ALIAS)")
        if not suffix.isdigit() or int(suffix) < 1:
            raise UsageError(f"{uri}: version {suffix!r} is not a version number; {hint}")
        return name, str(int(suffix)), None

    def _version_ref(self, uri: str, name: str, version: str) -> ModelRef:
        def missing() -> UsageError:
            latest = self._latest_version(name)
            what = f"its latest is {latest}" if latest else "it has no versions"
            return UsageError(f"{uri}: registered model {name!r} has no version {version} "
                              f"({what})")

        mv = self._call(f"read model version {name}/{version}", self.client.get_model_version,
                        name, version, not_found=missing)
        status = str(getattr(mv, "status", "READY") or "READY")
        if status == "FAILED_REGISTRATION":
            raise UsageError(f"{uri}: model version {name}/{version} failed to register "
                             f"({mv.status_message or 'no message'}); register it again")
        source = str(mv.source or "")
        return ModelRef(name=name, version=str(mv.version), uri=f"models:/{name}/{mv.version}",
                        run_id=mv.run_id or None, source=source,
                        storage_uri=self._storage_uri(mv, name, str(mv.version)))

    def _latest_version(self, name: str) -> str | None:
        with self._mlflow(f"list versions of {name!r}"):
            found = self.client.search_model_versions(
                f"name = '{name}'" if "'" not in name else f'name = "{name}"',
                max_results=1, order_by=["version_number DESC"])
        return str(found[0].version) if found else None

    def _storage_uri(self, mv: Any, name: str, version: str) -> str:
        """Where the version's files are: LoggedModel artifacts, run artifacts, or source."""
        source = str(mv.source or "")
        match = _LOGGED_MODEL_SOURCE.match(source)
        model_id = getattr(mv, "model_id", None) or (match.group(1) if match else None)
        if model_id:
            with self._mlflow(f"read logged model {model_id}"):
                try:
                    location = self.client.get_logged_model(model_id).artifact_location
                except MlflowException as exc:
                    if not _is_not_found(exc):
                        raise
                    location = None
            if location:
                return str(location)
        if source.startswith("runs:/"):
            run_id, _, path = source[len("runs:/"):].partition("/")
            run = self._call(f"read run {run_id}", self.client.get_run, run_id,
                             not_found=lambda: UsageError(
                                 f"models:/{name}/{version}: its source run {run_id} no "
                                 "longer exists"))
            base = str(run.info.artifact_uri).rstrip("/")
            return f"{base}/{path}" if path else base
        if source.startswith("models:/"):
            return self._call(f"resolve the files of {name}/{version}",
                              self.client.get_model_version_download_uri, name, version)
        return source

    def default_baseline(self, model_name: str, alias: str = "champion") -> ModelRef:
        """The version behind ``alias`` (the serving champion by default)."""
        model = self._call(f"read registered model {model_name!r}",
                           self.client.get_registered_model, model_name,
                           not_found=lambda: UsageError(
                               f"no registered model named {model_name!r} at "
                               f"{self.tracking_uri}"))
        aliases = dict(getattr(model, "aliases", None) or {})
        if alias not in aliases:
            raise UsageError(
                f"registered model {model_name!r} has no {alias!r} alias to use as the "
                f"baseline; set it with MlflowClient().set_registered_model_alias("
                f"{model_name!r}, {alias!r}, VERSION) or pass -C "
                f"baseline=models:/{model_name}/VERSION")
        return self._version_ref(f"models:/{model_name}@{alias}", model_name,
                                 str(aliases[alias]))

    # -- baseline KPIs ------------------------------------------------------------------
    def baseline_kpis(self, ref: ModelRef, policy: Policy) -> RegistryBaseline:
        """μ, σ and n per policy KPI for ``ref`` (which source wins: module docstring)."""
        offline: dict[str, list[float]] = {}
        prevalence: float | None = None
        run_label = ""
        if ref.run_id:
            metrics = self._run_metrics(ref.run_id)
            run_label = f"run {ref.run_id}"
            for kpi in policy.kpis:
                key = kpi.registry_metric or kpi.name
                if key not in metrics:
                    continue
                history = self._call(f"read metric history {key!r} of run {ref.run_id}",
                                     self.client.get_metric_history, ref.run_id, key)
                ordered = sorted(history, key=lambda m: (m.step, m.timestamp))
                values = _finite([m.value for m in ordered]) or _finite([metrics[key]])
                if values:
                    offline[kpi.name] = values
            value = metrics.get("prevalence")
            if value is not None and 0 < value < 1:
                prevalence = float(value)

        live = self._rollout_values(ref, policy)
        kpis: dict[str, BaselineKpi] = {}
        notes: list[str] = []
        for kpi in policy.kpis:
            lv, ov = live.get(kpi.name, []), offline.get(kpi.name, [])
            if len(lv) >= 2:
                values, where = lv, f"{len(lv)} earlier rollouts"
            elif len(ov) >= 2:
                values, where = ov, f"{run_label} history ({len(ov)} values)"
            elif lv:
                values, where = lv, "1 earlier rollout"
            elif ov:
                values, where = ov, run_label
            else:
                continue
            kpis[kpi.name] = _summary(values)
            notes.append(f"{kpi.name} from {where}")
        detail = "; ".join(notes) if notes else "no matching metrics"
        return RegistryBaseline(kpis=kpis, prevalence=prevalence,
                                source=f"{ref.uri}: {detail}")

    def _run_metrics(self, run_id: str) -> dict[str, float]:
        """Latest metric values of a run; empty when the run was deleted."""
        with self._mlflow(f"read run {run_id}"):
            try:
                return dict(self.client.get_run(run_id).data.metrics)
            except MlflowException as exc:
                if _is_not_found(exc):
                    return {}
                raise

    def _rollout_values(self, ref: ModelRef, policy: Policy) -> dict[str, list[float]]:
        """Final live KPI values of this version from earlier rollout runs."""
        experiment = self._call("read experiment " + ROLLOUT_EXPERIMENT,
                                self.client.get_experiment_by_name, ROLLOUT_EXPERIMENT)
        if experiment is None:
            return {}
        queries = (
            (f"tags.`kpigate.baseline_version` = '{ref.version}'", "baseline."),
            (f"tags.`kpigate.candidate_version` = '{ref.version}' and "
             "tags.`kpigate.outcome` = 'promoted'", "candidate."),
        )
        values: dict[str, list[float]] = {}
        for query, prefix in queries:
            runs = self._call("search earlier rollout runs", self.client.search_runs,
                              [experiment.experiment_id], filter_string=query,
                              max_results=MAX_ROLLOUT_RUNS, order_by=["attributes.start_time DESC"])
            for run in runs:
                tags = run.data.tags
                model = tags.get("kpigate.model")
                if prefix == "baseline.":
                    model = tags.get("kpigate.baseline_model", model)
                if model != ref.name:
                    continue
                if run.info.status not in (RunStatus.to_string(RunStatus.FINISHED),
                                           RunStatus.to_string(RunStatus.KILLED)):
                    continue  # a rollout in progress (or crashed) is not a finished measurement
                for kpi in policy.kpis:
                    value = run.data.metrics.get(prefix + kpi.name)
                    if value is not None and math.isfinite(value):
                        values.setdefault(kpi.name, []).append(float(value))
        return values

    # -- tags and aliases ---------------------------------------------------------------
    def set_tags(self, ref: ModelRef, tags: Mapping[str, str]) -> None:
        """Set model-version tags (values cut to :data:`MAX_TAG_VALUE` characters)."""
        for key, value in tags.items():
            self._call(f"set tag {key!r} on {ref.label}", self.client.set_model_version_tag,
                       ref.name, ref.version, key, truncate("" if value is None else value))

    def status_tags(self, ref: ModelRef, *, status: str, stage: str, decision: str,
                    reason: str, rollout_run_id: str | None) -> None:
        """Write the rollout's ``kpigate.*`` status tags on ``ref`` (the candidate)."""
        self.set_tags(ref, {
            "kpigate.status": status,
            "kpigate.stage": stage,
            "kpigate.decision": decision,
            "kpigate.reason": reason,
            "kpigate.rollout_run_id": rollout_run_id or "",
            "kpigate.updated_at": _utc_now(),
        })

    def mark_superseded(self, baseline: ModelRef, by: ModelRef) -> None:
        """Tag the old baseline as superseded by ``by``."""
        self.set_tags(baseline, {
            "kpigate.superseded_by": by.label,
            "kpigate.status": "superseded",
            "kpigate.updated_at": _utc_now(),
        })

    def move_alias(self, name: str, alias: str, version: str) -> str | None:
        """Point ``alias`` of ``name`` at ``version``; return the version it pointed at."""
        model = self._call(f"read registered model {name!r}", self.client.get_registered_model,
                           name, not_found=lambda: UsageError(
                               f"no registered model named {name!r} at {self.tracking_uri}"))
        previous = dict(getattr(model, "aliases", None) or {}).get(alias)
        self._call(f"move alias {alias!r} of {name!r} to version {version}",
                   self.client.set_registered_model_alias, name, alias, str(version),
                   not_found=lambda: UsageError(
                       f"registered model {name!r} has no version {version}"))
        return None if previous is None else str(previous)

    # -- the rollout run ----------------------------------------------------------------
    def _rollout_experiment_id(self) -> str:
        exp = self._call("read experiment " + ROLLOUT_EXPERIMENT,
                         self.client.get_experiment_by_name, ROLLOUT_EXPERIMENT)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                self._call("restore experiment " + ROLLOUT_EXPERIMENT,
                           self.client.restore_experiment, exp.experiment_id)
            return str(exp.experiment_id)
        with self._mlflow("create experiment " + ROLLOUT_EXPERIMENT):
            try:
                return str(self.client.create_experiment(ROLLOUT_EXPERIMENT))
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
        # Another process created it between the two calls.
        exp = self._call("read experiment " + ROLLOUT_EXPERIMENT,
                         self.client.get_experiment_by_name, ROLLOUT_EXPERIMENT)
        return str(exp.experiment_id)

    def start_rollout_run(self, *, deployment: str, candidate: ModelRef, baseline: ModelRef,
                          policy_file: Path, params: Mapping[str, str]) -> str:
        """Create the rollout's run in ``kpigate-rollouts``; log the policy; return its id."""
        exp_id = self._rollout_experiment_id()
        tags = {
            "kpigate.deployment": deployment,
            "kpigate.model": candidate.name,
            "kpigate.candidate_version": candidate.version,
            "kpigate.baseline_version": baseline.version,
            "kpigate.candidate_uri": candidate.uri,
            "kpigate.baseline_uri": baseline.uri,
            "kpigate.baseline_model": baseline.name,
        }
        name = f"{deployment} {candidate.name} v{candidate.version} vs v{baseline.version}"
        run = self._call("create the rollout run", self.client.create_run, exp_id,
                         run_name=name, tags={k: truncate(v) for k, v in tags.items()})
        run_id = str(run.info.run_id)
        items = [Param(str(k), truncate(str(v), MAX_PARAM_VALUE)) for k, v in params.items()]
        for start in range(0, len(items), _MAX_PARAMS_PER_BATCH):
            self._call("log rollout parameters", self.client.log_batch, run_id,
                       params=items[start:start + _MAX_PARAMS_PER_BATCH])
        self._call("upload the policy file", self.client.log_artifact, run_id,
                   str(policy_file), "policy")
        return run_id

    def log_evaluation(self, run_id: str, step: int, decision: Decision,
                       weights_percent: float, timestamp_ms: int | None = None) -> None:
        """Log one evaluation: per-KPI evidence metrics at ``step``, and the decision JSON.

        Metrics (finite values only): ``candidate.<kpi>``, ``baseline.<kpi>``,
        ``delta.<kpi>``, ``lower.<kpi>``, ``upper.<kpi>``, ``traffic.candidate_percent``,
        ``decision.code`` (promote 1, hold 0, rollback −1) and ``stage_index``, in one
        ``log_batch`` call (split only beyond MLflow's 1000 metrics per batch).
        """
        ts = int(time.time() * 1000) if timestamp_ms is None else int(timestamp_ms)
        metrics: list[Metric] = []

        def add(key: str, value: float | None) -> None:
            if value is not None and math.isfinite(float(value)):
                metrics.append(Metric(key, float(value), ts, int(step)))

        for ev in decision.evidence:
            add(f"candidate.{ev.kpi}", ev.candidate_value)
            add(f"baseline.{ev.kpi}", ev.baseline_value)
            add(f"delta.{ev.kpi}", ev.delta)
            add(f"lower.{ev.kpi}", ev.lower)
            add(f"upper.{ev.kpi}", ev.upper)
        add("traffic.candidate_percent", weights_percent)
        add("decision.code", DECISION_CODES[decision.action])
        add("stage_index", decision.stage_index)
        for start in range(0, len(metrics), _MAX_METRICS_PER_BATCH):
            self._call(f"log evaluation {step}", self.client.log_batch, run_id,
                       metrics=metrics[start:start + _MAX_METRICS_PER_BATCH])
        self._call(f"upload decision {step}", self.client.log_text, run_id,
                   decision.to_json(indent=2), f"decisions/{int(step):05d}.json")

    def log_evaluation_record(self, run_id: str, evaluation: Evaluation) -> None:
        """Upload the evaluation with its inputs as ``evaluations/NNNNN.json``.

        With the policy (``policy/``) these let ``kpigate replay --run-id`` re-judge the
        rollout from the run alone.
        """
        record = {**evaluation.to_dict(), "decision": evaluation.decision.to_dict()}
        self._call(f"upload evaluation {evaluation.number}", self.client.log_text, run_id,
                   json.dumps(record, allow_nan=False),
                   f"{EVALUATIONS_DIR}/{int(evaluation.number):05d}.json")

    def evaluation_records(self, run_id: str) -> list[Evaluation]:
        """The evaluation records of a rollout run, in order (empty if it kept none)."""
        files = self._call(f"list the evaluations of run {run_id}", self.client.list_artifacts,
                           run_id, EVALUATIONS_DIR,
                           not_found=lambda: UsageError(f"--run-id {run_id}: no such run at "
                                                        f"{self.tracking_uri}"))
        if not files:
            return []
        with tempfile.TemporaryDirectory(prefix="kpigate-replay-") as tmp:
            self._call(f"download the evaluations of run {run_id}",
                       self.client.download_artifacts, run_id, EVALUATIONS_DIR, tmp)
            records = [json.loads((Path(tmp) / item.path).read_text())
                       for item in sorted(files, key=lambda f: f.path)]
        return [Evaluation.from_dict(r, Decision.from_dict(r["decision"])) for r in records]

    def rollout_policy(self, run_id: str, directory: Path) -> Path:
        """Download the rollout run's frozen policy into ``directory``; its path."""
        local = self._call(f"download the policy of run {run_id}",
                           self.client.download_artifacts, run_id, "policy", str(directory),
                           not_found=lambda: UsageError(f"--run-id {run_id}: the run has no "
                                                        "policy artifact; is it a kpigate "
                                                        "rollout run?"))
        files = sorted(Path(local).glob("*.y*ml"))
        if not files:
            raise UsageError(f"--run-id {run_id}: the run's policy/ holds no YAML file")
        return files[0]

    def finish_rollout_run(self, run_id: str, *, outcome: str,
                           report_dir: Path | None) -> None:
        """Tag the outcome, upload the report under ``report/`` and end the run.

        The run ends FINISHED whatever the outcome (a rollback is a successful rollout
        *process*; the ``kpigate.outcome`` tag says what happened), KILLED when
        ``outcome`` is ``aborted``.
        """
        self._call("tag the rollout outcome", self.client.set_tag, run_id, "kpigate.outcome",
                   truncate(outcome))
        if report_dir is not None and Path(report_dir).is_dir():
            self._call("upload the report", self.client.log_artifacts, run_id,
                       str(report_dir), "report")
        status = RunStatus.KILLED if outcome == "aborted" else RunStatus.FINISHED
        self._call("end the rollout run", self.client.set_terminated, run_id,
                   RunStatus.to_string(status))

"""The Prometheus metrics source: a cluster rollout's KPI samples, read back from Prometheus.

:class:`PrometheusSource` implements :class:`~mlflow_kpigate.rollout.ports.SampleSource` for one
deployment. Per stage and role it rebuilds the :class:`~mlflow_kpigate.kpis.RoleAggregate`
the gate consumes from three kinds of series:

* **the kpigate collector's** ``kpigate_stage_*`` series (names and bucket bounds in
  :mod:`mlflow_kpigate.metrics.exposition`): confusion cells, score histograms, segment
  confusions and raw moments of business values of matured labelled predictions, and,
  with ``requests_from: kpigate``, requests, errors and the latency histogram. They are
  cumulative per stage and already restricted to matured labels by the collector (with
  the policy's ``evaluation.maturity``), so the source reads their latest values;
* **Seldon's** (``requests_from: seldon``): the v1 executor's
  ``seldon_api_executor_server_requests_seconds_*`` per predictor (= role), or v2's
  ``seldon_model_infer_total`` / ``seldon_model_infer_seconds_total`` per model
  (``NAME-baseline`` / ``NAME-candidate``). These have no stage label, so each stage's
  share is the counters' growth over the stage's window (:class:`StageWindow`), computed
  exactly rather than with ``increase()`` (see :mod:`mlflow_kpigate.metrics.promql`);
* **custom PromQL** per KPI (``metrics.queries``): per role and stage a unit count, a sum
  and a sum of squares, which become the KPI's logged values.

Anything that keeps an evaluation from seeing its data (Prometheus unreachable or timing
out, HTTP errors, a rejected query, a missing series, NaN or infinite values) raises
:class:`MetricsUnavailable`, after retries with exponential backoff within the policy's
``max_wait``; the controller turns it into a hold, never a promotion.

Departure from the design notes: the latency histograms of the collector's series keep
the collector's own bucket layout (0.001 s × 1.25^i, see :data:`LATENCY_BUCKETS`) instead of
the aggregate spec's default 1.02 layout, so that every Prometheus bucket is one histogram
bucket with the same bounds: quantiles interpolate inside real buckets and the gate's
exceedance counts at bucket edges stay exact. Such aggregates merge with each other (one
source always uses one layout) but not with the embedded collector's.
"""

from __future__ import annotations

import ast
import json
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import requests
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from urllib3.util.retry import Retry

from mlflow_kpigate.core import errors
from mlflow_kpigate.core.errors import PolicyError, UsageError
from mlflow_kpigate.core.records import ROLES
from mlflow_kpigate.core.samples import StageSample
from mlflow_kpigate.kpis import AggregateSpec, CoMoments, Confusion, LatencyHistogram, RoleAggregate
from mlflow_kpigate.metrics import exposition as ex
from mlflow_kpigate.metrics import promql
from mlflow_kpigate.policy import LATENCY, KpiKind, KpiQuery, KpiSpec, Policy, RequestsFrom

__all__ = [
    "EXECUTOR_METRIC",
    "V2_INFER_SECONDS",
    "V2_INFER_TOTAL",
    "MetricsUnavailable",
    "PrometheusSource",
    "StageWindow",
    "check_policy",
    "requests_source",
]



#: Seldon Core v1's executor histogram (``_bucket``, ``_count``, ``_sum``).
EXECUTOR_METRIC = "seldon_api_executor_server_requests_seconds"
#: Seldon Core v2's per-model counters.
V2_INFER_TOTAL = "seldon_model_infer_total"
V2_INFER_SECONDS = "seldon_model_infer_seconds_total"
# The executor also times feedback, metadata and health calls; only predictions count.
_NOT_PREDICTIONS = "(?i).*(feedback|metadata|status|health|ready|live).*"
#: First wait between retries of a failed query (doubled after each retry).
BACKOFF_S = 0.5


class MetricsUnavailable(errors.MetricsUnavailable):
    """An evaluation could not get the data it needs from Prometheus.

    ``reason`` is one line naming the query (or series) and what happened; ``kind`` says
    which failure it was (``unreachable``, ``timeout``, ``http``, ``query_error``,
    ``missing``, ``not_finite``, ``malformed``), ``query`` is the PromQL sent and
    ``attempts`` how many HTTP requests this evaluation had made when it gave up. The
    controller holds the rollout (never promotes) and reports ``reason``.
    """

    def __init__(self, reason: str, *, kind: str, query: str | None = None,
                 attempts: int = 0) -> None:
        self.reason = " ".join(reason.split())
        self.kind = kind
        self.query = query
        self.attempts = attempts
        super().__init__(self.reason)


@dataclass(frozen=True)
class StageWindow:
    """When a stage's traffic was served: from ``start`` (the moment it was ready, Unix
    seconds) to ``end`` (``None`` while the stage is still running)."""

    stage_index: int
    start: float
    end: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.stage_index, bool) or not isinstance(self.stage_index, int) \
                or self.stage_index < 0:
            raise ValueError(f"stage_index must be an integer >= 0, got {self.stage_index!r}")
        if not (isinstance(self.start, (int, float)) and math.isfinite(self.start)):
            raise ValueError(f"start must be a finite time in seconds, got {self.start!r}")
        if self.end is not None and not (isinstance(self.end, (int, float))
                                         and math.isfinite(self.end) and self.end >= self.start):
            raise ValueError(f"end must be a finite time >= start ({self.start}), got {self.end!r}")


def requests_source(policy: Policy, seldon_version: int | None) -> RequestsFrom:
    """Where requests, errors and latency come from: the policy's choice, else Seldon's
    executor with Seldon v1 and the kpigate collector otherwise."""
    chosen = policy.metrics.prometheus.requests_from
    if chosen is not None:
        return chosen
    return RequestsFrom.SELDON if seldon_version == 1 else RequestsFrom.KPIGATE


def _is_latency(kpi: KpiSpec) -> bool:
    return kpi.kind is KpiKind.QUANTILE or (kpi.kind is KpiKind.MEAN and kpi.source == LATENCY)


def check_policy(policy: Policy, seldon_version: int | None) -> None:
    """Refuse a policy this source cannot measure (``PolicyError``, exit code 2).

    Seldon v2 exports a count and a total of seconds per model: a mean but no spread, so
    neither a latency quantile nor the gate's (log-scale) latency mean can be tested from
    it; a zero-variance stand-in would hold forever instead of failing loudly.
    """
    if seldon_version not in (1, 2, None):
        raise UsageError(f"-C seldon_version={seldon_version}: must be 1 or 2")
    source = requests_source(policy, seldon_version)
    problems: list[str] = []
    if source is RequestsFrom.SELDON and seldon_version is None:
        problems.append("metrics.prometheus.requests_from: 'seldon' needs a Seldon "
                        "deployment (-t kpigate:/seldon/NAMESPACE); use 'kpigate'")
    if source is RequestsFrom.SELDON and seldon_version == 2:
        for i, kpi in enumerate(policy.kpis):
            if _is_latency(kpi):
                problems.append(
                    f"kpis[{i}]: {kpi.name!r} needs a latency distribution, but Seldon v2 "
                    "exports only a count and a total of seconds per model; set "
                    "metrics.prometheus.requests_from: kpigate to use the kpigate "
                    "collector's latency histogram")
    if problems:
        raise PolicyError(problems, policy.source)


# --------------------------------------------------------------------------------------
# Talking to Prometheus
# --------------------------------------------------------------------------------------

Labels = dict[str, str]


class _Failure(Exception):
    def __init__(self, kind: str, message: str, retry: bool) -> None:
        super().__init__(message)
        self.kind, self.message, self.retry = kind, message, retry


def _classify(exc: Exception) -> _Failure:
    """What a failed request means, and whether trying again could help."""
    if isinstance(exc, requests.exceptions.Timeout):
        return _Failure("timeout", "timed out", True)
    if isinstance(exc, requests.exceptions.ConnectionError):
        return _Failure("unreachable", "Prometheus is unreachable (connection failed)", True)
    if isinstance(exc, PrometheusApiClientException):
        match = re.match(r"HTTP Status Code (\d+) \((.*)\)$", str(exc), re.S)
        status = int(match.group(1)) if match else 0
        detail = _error_detail(match.group(2)) if match else str(exc)
        if 400 <= status < 500:
            # Prometheus rejects bad PromQL with 400/422: the same query fails again.
            return _Failure("query_error", f"rejected by Prometheus (HTTP {status}): {detail}",
                            False)
        return _Failure("http", f"HTTP {status} from Prometheus: {detail}", True)
    if isinstance(exc, (ValueError, KeyError, TypeError)):
        return _Failure("malformed", f"not a Prometheus API answer ({exc})", False)
    return _Failure("unreachable", f"request failed: {exc}", True)


def _error_detail(body_repr: str) -> str:
    """The ``error`` field of Prometheus' JSON error body (the client gives its repr)."""
    try:
        body = ast.literal_eval(body_repr)
        data = json.loads(body)
        return str(data.get("error") or data)[:300]
    except (ValueError, SyntaxError, TypeError, AttributeError):
        return body_repr[:300]


def _number(text: Any, query: str, labels: Mapping[str, str], attempts: int) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise MetricsUnavailable(f"{query}: value {text!r} is not a number", kind="malformed",
                                 query=query, attempts=attempts) from None
    if not math.isfinite(value):
        series = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        raise MetricsUnavailable(f"{query}: {{{series}}} is {text}; a KPI cannot use a value "
                                 "that is not finite", kind="not_finite", query=query,
                                 attempts=attempts)
    return value


class _Session:
    """One evaluation's queries: retries with backoff, all within one deadline."""

    def __init__(self, prom: PrometheusConnect, timeout: float, retries: int, deadline: float,
                 clock: Callable[[], float], sleep: Callable[[float], None]) -> None:
        self.prom, self.timeout, self.retries = prom, timeout, retries
        self.deadline, self.clock, self.sleep = deadline, clock, sleep
        self.attempts = 0

    def _raw(self, query: str, at: float) -> Any:
        delay = BACKOFF_S
        tries = 0
        while True:
            remaining = self.deadline - self.clock()
            if remaining <= 0:
                raise MetricsUnavailable(f"{query}: max_wait is used up before this query "
                                         "could run", kind="timeout", query=query,
                                         attempts=self.attempts)
            tries += 1
            self.attempts += 1
            try:
                return self.prom.custom_query(query, params={"time": f"{at:.3f}"},
                                              timeout=min(self.timeout, remaining))
            except Exception as exc:  # every failure is classified just below
                failure = _classify(exc)
            if not failure.retry:
                raise MetricsUnavailable(f"{query}: {failure.message}", kind=failure.kind,
                                         query=query, attempts=self.attempts)
            if tries > self.retries:
                raise MetricsUnavailable(f"{query}: {failure.message}; gave up after {tries} "
                                         "attempts (metrics.prometheus.retries)",
                                         kind=failure.kind, query=query,
                                         attempts=self.attempts)
            if delay >= self.deadline - self.clock():
                raise MetricsUnavailable(f"{query}: {failure.message}; gave up after {tries} "
                                         "attempts: the next retry would pass "
                                         "metrics.prometheus.max_wait", kind=failure.kind,
                                         query=query, attempts=self.attempts)
            self.sleep(delay)
            delay *= 2

    def vector(self, query: str, at: float) -> list[tuple[Labels, float]]:
        """An instant query's series and values (a scalar answer is one unlabelled value)."""
        result = self._raw(query, at)
        if isinstance(result, list) and len(result) == 2 and not isinstance(result[0], dict):
            return [({}, _number(result[1], query, {}, self.attempts))]
        out = []
        for item in result or []:
            if not isinstance(item, dict) or "value" not in item:
                raise MetricsUnavailable(f"{query}: expected an instant vector",
                                         kind="malformed", query=query, attempts=self.attempts)
            labels = dict(item.get("metric") or {})
            out.append((labels, _number(item["value"][1], query, labels, self.attempts)))
        return out

    def matrix(self, query: str, at: float) -> list[tuple[Labels, list[tuple[float, float]]]]:
        """A range selector's raw samples per series."""
        out = []
        for item in self._raw(query, at) or []:
            if not isinstance(item, dict) or "values" not in item:
                raise MetricsUnavailable(f"{query}: expected a range vector",
                                         kind="malformed", query=query, attempts=self.attempts)
            labels = dict(item.get("metric") or {})
            out.append((labels, [(float(t), _number(v, query, labels, self.attempts))
                                 for t, v in item["values"]]))
        return out

    def missing(self, query: str, why: str) -> MetricsUnavailable:
        """The error for a query whose data must exist but does not."""
        return MetricsUnavailable(f"{query}: {why}", kind="missing", query=query,
                                  attempts=self.attempts)


# --------------------------------------------------------------------------------------
# The source
# --------------------------------------------------------------------------------------

class _Key(NamedTuple):
    """What identifies one of the collector's series (the labels the source reads)."""

    name: str
    stage: int
    role: str
    outcome: str | None
    label: str | None
    le: str | None
    field: str | None
    value: str | None
    value_name: str | None
    name_a: str | None
    name_b: str | None


@dataclass
class _Tally:
    """One role's requests in one stage window, from Seldon's counters."""

    requests: float = 0.0
    errors: float = 0.0
    seconds: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)  # le -> cumulative count

    def count(self, code: str | None, growth: float) -> None:
        """Add requests answered with ``code``: 4xx are the caller's, not the model's."""
        kind = promql.code_kind(code)
        if kind != "client":
            self.requests += growth
            if kind == "server":
                self.errors += growth


class _Samples:
    """The aggregates of one evaluation, created on first use per (stage, role)."""

    def __init__(self, spec: AggregateSpec, latency_template: LatencyHistogram) -> None:
        self.spec, self.template = spec, latency_template
        self.aggregates: dict[tuple[int, str], RoleAggregate] = {}

    def get(self, stage: int, role: str) -> RoleAggregate:
        key = (stage, role)
        if key not in self.aggregates:
            agg = RoleAggregate(self.spec)
            t = self.template
            agg.latency = LatencyHistogram(t.low, t.high, t.growth)
            self.aggregates[key] = agg
        return self.aggregates[key]

    def result(self) -> list[StageSample]:
        stages = sorted({s for s, _ in self.aggregates})
        out = []
        for stage in stages:
            pair = [self.get(stage, role) for role in ROLES]
            if any(a.requests or a.labelled or (a.values is not None and a.values.n)
                   for a in pair):
                out.append(StageSample(stage, pair[0], pair[1]))
        return out


class PrometheusSource:
    """KPI samples of one cluster rollout, read from Prometheus (a ``SampleSource``).

    ``url`` is Prometheus' base URL (``None``: the policy's ``metrics.prometheus.url``);
    ``deployment`` and ``namespace`` name the rollout; ``seldon_version`` is 1, 2 or
    ``None`` (no Seldon: everything from the kpigate collector); ``windows`` returns the
    stage windows so far. ``timeout``, ``retries`` and ``max_wait`` default to the
    policy's ``metrics.prometheus`` values; ``clock`` and ``sleep`` time the retries.
    Raises ``PolicyError`` for a policy it cannot measure (see :func:`check_policy`).
    """

    def __init__(self, url: str | None, deployment: str, namespace: str, policy: Policy, *,
                 seldon_version: int | None, windows: Callable[[], Sequence[StageWindow]],
                 timeout: float | None = None, retries: int | None = None,
                 max_wait: float | None = None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        settings = policy.metrics.prometheus
        url = url or settings.url
        if not url:
            raise UsageError("-C prometheus_url: not set, and the policy has no "
                             "metrics.prometheus.url; give Prometheus' base URL, e.g. "
                             "-C prometheus_url=http://prometheus-operated.monitoring.svc:9090")
        if not isinstance(deployment, str) or not deployment:
            raise UsageError("--name: the deployment name must not be empty")
        check_policy(policy, seldon_version)
        self.url = url.rstrip("/")
        self.deployment, self.namespace, self.policy = deployment, namespace, policy
        self.seldon_version = seldon_version
        self.requests_from = requests_source(policy, seldon_version)
        self.windows = windows
        self.timeout = settings.timeout if timeout is None else float(timeout)
        self.retries = settings.retries if retries is None else int(retries)
        self.max_wait = settings.max_wait if max_wait is None else float(max_wait)
        self._clock, self._sleep = clock, sleep
        # Retries are ours (counted, bounded by max_wait); the client must not add its own.
        self._prom = PrometheusConnect(self.url, retry=Retry(total=0, redirect=0,
                                                             raise_on_status=False))
        self.queries: tuple[KpiQuery, ...] = policy.metrics.queries
        self.uses_collector = self.requests_from is RequestsFrom.KPIGATE or any(
            kpi.needs_labels and policy.metrics.query(kpi.name) is None for kpi in policy.kpis)
        template = promql.latency_layout(ex.LATENCY_BUCKETS) \
            if self.requests_from is RequestsFrom.KPIGATE else LatencyHistogram()
        # The collector exports 100 score buckets (0.01 … 1.0). With score_bins=100 bucket
        # k is ScoreHistogram bin k. The default 1000 bins would give the same AUC and
        # error bound (each bucket would still fill a single bin: only the order of bins
        # and ties within one matter), so the 1:1 map is the simpler and honest choice.
        self.spec = AggregateSpec(segment_fields=policy.segment_fields,
                                  value_names=policy.value_names,
                                  score_bins=len(ex.SCORE_BUCKETS),
                                  latency_growth=template.growth)
        self._template = template
        #: HTTP requests made by the last :meth:`stage_samples` call (retries included).
        self.attempts = 0

    def close(self) -> None:
        """Release the HTTP connection pool."""
        self._prom.close()

    def __enter__(self) -> PrometheusSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the SampleSource interface -----------------------------------------------------

    def stage_samples(self, now: float, maturity_s: float) -> list[StageSample]:
        """One :class:`StageSample` per stage with data, in stage order.

        ``maturity_s`` is applied by the collector, which exports labelled counts only for
        predictions older than the policy's ``evaluation.maturity``; it is accepted for
        the interface. Raises :class:`MetricsUnavailable` when data cannot be had.
        """
        session = _Session(self._prom, self.timeout, self.retries,
                           self._clock() + self.max_wait, self._clock, self._sleep)
        try:
            return self._collect(session, float(now))
        finally:
            self.attempts = session.attempts

    def _collect(self, session: _Session, now: float) -> list[StageSample]:
        samples = _Samples(self.spec, self._template)
        windows = []
        for window in self.windows():
            if not isinstance(window, StageWindow):
                raise TypeError(f"windows() must return StageWindow items, got {window!r}")
            if window.start < now:
                windows.append((window.stage_index, window.start,
                                min(window.end if window.end is not None else now, now)))
        if self.uses_collector:
            self._read_collector(session, now, samples)
        if self.requests_from is RequestsFrom.SELDON and windows:
            if self.seldon_version == 1:
                self._read_executor(session, now, windows, samples)
            else:
                self._read_v2(session, now, windows, samples)
        if self.queries:
            for stage, start, end in windows:
                if end - start >= 1:
                    self._read_queries(session, stage, start, end, samples)
        return samples.result()

    # -- the kpigate collector ------------------------------------------------------------

    def _read_collector(self, session: _Session, now: float, samples: _Samples) -> None:
        query = promql.selector(
            "", equal={ex.LABEL_DEPLOYMENT: self.deployment},
            regex={"__name__": f"kpigate_stage_.+|{ex.COLLECTOR_STAGE}"})
        latest: dict[_Key, float] = {}
        seen_collector = False
        keys = (ex.LABEL_OUTCOME, ex.LABEL_TRUE_LABEL, ex.LABEL_LE, ex.LABEL_FIELD,
                ex.LABEL_VALUE, ex.LABEL_NAME, ex.LABEL_NAME_A, ex.LABEL_NAME_B)
        for labels, value in session.vector(query, now):
            name = labels.get("__name__", "")
            if name == ex.COLLECTOR_STAGE:
                seen_collector = True
                continue
            role = labels.get(ex.LABEL_ROLE)
            stage_text = labels.get(ex.LABEL_STAGE, "")
            if role not in ROLES or not stage_text.isdigit():
                continue
            key = _Key(name, int(stage_text), role, *(labels.get(k) for k in keys))
            # Two exporters of one (deployment, stage, role) read the same durable store
            # (e.g. a restarted collector pod); both values are cumulative since the stage
            # began, so the larger is the fresher.
            latest[key] = max(value, latest.get(key, value))
        if not seen_collector:
            raise session.missing(query, f"no {ex.COLLECTOR_STAGE} series for "
                                  f"deployment={self.deployment!r}: the kpigate collector is "
                                  "not scraped by this Prometheus, or it exports another "
                                  "deployment name")
        _CollectorSeries(latest, self, session, query).fill(samples)

    # -- Seldon v1: the executor's histogram, per stage window ---------------------------

    def _executor_labels(self) -> dict[str, Mapping[str, str]]:
        return {"equal": {"deployment_name": self.deployment},
                # Prometheus Operator adds the pod's namespace; a plain setup may not.
                "regex": {"namespace": f"{re.escape(self.namespace)}|"},
                "not_regex": {"service": _NOT_PREDICTIONS}}

    def _read_executor(self, session: _Session, now: float,
                       windows: Sequence[tuple[int, float, float]], samples: _Samples) -> None:
        sel = self._executor_labels()
        probe = promql.selector(f"{EXECUTOR_METRIC}_count", **sel)
        if not session.vector(probe, now):
            raise session.missing(probe, "no Seldon executor series: no request has reached "
                                  "the deployment yet, or Prometheus does not scrape its "
                                  "executor (check the pods' prometheus.io annotations or "
                                  "the PodMonitor)")
        for stage, start, end in windows:
            counts = self._window_growth(session, f"{EXECUTOR_METRIC}_count", sel, start, end)
            buckets = self._window_growth(session, f"{EXECUTOR_METRIC}_bucket", sel, start, end)
            sums = self._window_growth(session, f"{EXECUTOR_METRIC}_sum", sel, start, end)
            tallies = {role: _Tally() for role in ROLES}
            for labels, growth in counts:
                tally = tallies.get(labels.get("predictor_name", ""))
                if tally is not None:
                    tally.count(labels.get("code"), growth)
            for labels, growth in sums:
                tally = tallies.get(labels.get("predictor_name", ""))
                if tally is not None and promql.code_kind(labels.get("code")) != "client":
                    tally.seconds += growth
            for labels, growth in buckets:
                tally = tallies.get(labels.get("predictor_name", ""))
                if tally is not None and promql.code_kind(labels.get("code")) != "client":
                    le = float(labels.get("le", "nan"))
                    tally.buckets[le] = tally.buckets.get(le, 0.0) + growth
            for role, tally in tallies.items():
                if round(tally.requests) > 0:
                    agg = samples.get(stage, role)
                    agg.requests += round(tally.requests)
                    agg.errors += round(tally.errors)
                    agg.latency.merge(promql.latency_from_buckets(
                        samples.template, tally.buckets, tally.seconds))

    def _window_growth(self, session: _Session, metric: str, sel: Mapping[str, Any],
                       start: float, end: float) -> list[tuple[Labels, float]]:
        """Each counter series' exact growth over ``(start, end]`` (see ``promql``)."""
        series = promql.selector(metric, **sel)

        def key(labels: Mapping[str, str]) -> frozenset[tuple[str, str]]:
            return frozenset((k, v) for k, v in labels.items() if k != "__name__")

        def values_at(query: str, at: float) -> dict[frozenset[tuple[str, str]], float]:
            return {key(labels): v for labels, v in session.vector(query, at)}

        before = values_at(promql.last_value_at(series, start), start)
        after = values_at(promql.last_value_at(series, end), end)
        resets = values_at(promql.resets_in(series, start, end), end)
        exact = {k for k in before.keys() | after.keys()
                 if resets.get(k, 0) > 0 or k not in after or after[k] < before.get(k, 0.0)}
        growth = {k: after[k] - before.get(k, 0.0) for k in after if k not in exact}
        if exact:
            for labels, points in session.matrix(promql.raw_samples(series, start, end), end):
                if key(labels) in exact:
                    growth[key(labels)] = promql.counter_increase(points, start)
        return [(dict(k), v) for k, v in growth.items()]

    # -- Seldon v2: per-model counters ---------------------------------------------------

    def _read_v2(self, session: _Session, now: float,
                 windows: Sequence[tuple[int, float, float]], samples: _Samples) -> None:
        models = {f"{self.deployment}-{role}": role for role in ROLES}
        sel = {"regex": {"model": "|".join(re.escape(m) for m in models),
                         "namespace": f"{re.escape(self.namespace)}|"}}
        probe = promql.selector(V2_INFER_TOTAL, **sel)
        found = session.vector(probe, now)
        if not found:
            raise session.missing(probe, "no Seldon v2 model series: no request has reached "
                                  "the models yet, or Prometheus does not scrape Seldon's "
                                  "model servers")
        needs_errors = any(k.kind is KpiKind.PROPORTION and k.metric == "error_rate"
                           for k in self.policy.kpis)
        if needs_errors and any("code" not in labels for labels, _ in found):
            raise MetricsUnavailable(f"{probe}: has no code label, so failed requests cannot "
                                     "be told from served ones for error_rate; set "
                                     "metrics.prometheus.requests_from: kpigate",
                                     kind="malformed", query=probe, attempts=session.attempts)
        for stage, start, end in windows:
            tallies = {role: _Tally() for role in ROLES}
            for labels, growth in self._window_growth(session, V2_INFER_TOTAL, sel, start, end):
                tally = tallies.get(models.get(labels.get("model", ""), ""))
                if tally is not None:
                    tally.count(labels.get("code"), growth)
            for labels, growth in self._window_growth(session, V2_INFER_SECONDS, sel, start,
                                                      end):
                tally = tallies.get(models.get(labels.get("model", ""), ""))
                if tally is not None and promql.code_kind(labels.get("code")) != "client":
                    tally.seconds += growth
            for role, tally in tallies.items():
                n = round(tally.requests)
                if n <= 0:
                    continue
                agg = samples.get(stage, role)
                agg.requests += n
                agg.errors += round(tally.errors)
                if tally.seconds > 0:
                    # Only the mean is known: every request is put at it (latency KPIs are
                    # refused for v2 by check_policy; this serves reports' mean latency).
                    mean = tally.seconds / n
                    counts = np.zeros(agg.latency.counts.size, dtype=np.int64)
                    counts[promql.bucket_below(agg.latency, mean)] = n
                    agg.latency.add_binned(counts, math.log(mean), 0.0, tally.seconds)

    # -- custom PromQL -------------------------------------------------------------------

    def _scalar(self, session: _Session, query: str, at: float) -> float:
        result = session.vector(query, at)
        if not result:
            raise session.missing(query, "returned no data; check the metric and label names "
                                  "(append 'or vector(0)' if no data means zero)")
        if len(result) > 1:
            raise MetricsUnavailable(f"{query}: returned {len(result)} series, expected one "
                                     "number; wrap it in sum(...)", kind="malformed",
                                     query=query, attempts=session.attempts)
        return result[0][1]

    def _read_queries(self, session: _Session, stage: int, start: float, end: float,
                      samples: _Samples) -> None:
        names = self.spec.value_names
        index = {name: i for i, name in enumerate(names)}
        for role in ROLES:
            values = {"deployment": self.deployment, "namespace": self.namespace,
                      "role": role, "stage": str(stage), "window": promql.duration(end - start),
                      "start": f"{start:.3f}", "end": f"{end:.3f}"}
            # All queries count the same units (validated with the policy).
            n = round(self._scalar(session, promql.render(self.queries[0].count, values), end))
            if n <= 0:
                continue
            mean = np.zeros(len(names))
            comoment = np.zeros((len(names), len(names)))
            for q in self.queries:
                kpi = self.policy.kpi(q.kpi)
                total = self._scalar(session, promql.render(q.sum, values), end)
                if kpi.kind is KpiKind.PROPORTION:
                    num, unit = index[kpi.numerator or ""], index[kpi.denominator or ""]
                    mean[num], mean[unit] = total / n, 1.0
                    # Events per unit are 0/1, so the sum of squares equals the sum. The
                    # proportion's own estimator uses only the totals.
                    comoment[num, num] = max(total - total * total / n, 0.0)
                    continue
                name = index[kpi.source if kpi.kind is KpiKind.MEAN else kpi.numerator or ""]
                rendered = promql.render(q.sum_squares or "", values)
                squares = self._scalar(session, rendered, end)
                spread = squares - total * total / n
                if spread < -1e-9 * max(1.0, abs(squares)):
                    raise MetricsUnavailable(
                        f"{rendered}: the sum of squares ({squares:g}) is below sum²/count "
                        f"({total * total / n:g}); the count, sum and sum_squares queries of "
                        f"{q.kpi!r} do not describe the same units", kind="malformed",
                        query=rendered, attempts=session.attempts)
                mean[name], comoment[name, name] = total / n, max(spread, 0.0)
            # Covariances between different queries' values stay 0: no KPI reads them (a
            # business KPI with a value denominator cannot have a query).
            part = CoMoments.from_dict({"names": list(names), "n": n, "mean": mean.tolist(),
                                        "comoment": comoment.tolist()})
            agg = samples.get(stage, role)
            if agg.values is not None:  # always: queries feed the policy's value names
                agg.values.merge(part)


class _CollectorSeries:
    """The collector's latest values (one per :class:`_Key`), turned into aggregates."""

    def __init__(self, latest: Mapping[_Key, float], source: PrometheusSource,
                 session: _Session, query: str) -> None:
        self.source, self.session, self.query = source, session, query
        self.by_stage: dict[tuple[int, str], list[tuple[_Key, float]]] = {}
        for key, value in latest.items():
            self.by_stage.setdefault((key.stage, key.role), []).append((key, value))

    def fill(self, samples: _Samples) -> None:
        spec = self.source.spec
        kpigate_requests = self.source.requests_from is RequestsFrom.KPIGATE
        use_values = bool(spec.value_names) and not self.source.queries
        for (stage, role), rows in self.by_stage.items():
            agg = samples.get(stage, role)
            get = self._getter(rows)
            if kpigate_requests:
                agg.requests += round(get(ex.STAGE_REQUESTS))
                agg.errors += round(get(ex.STAGE_ERRORS))
                buckets = self._buckets(rows, f"{ex.STAGE_LATENCY}_bucket")
                if buckets:
                    agg.latency.merge(promql.latency_from_buckets(
                        samples.template, buckets, get(f"{ex.STAGE_LATENCY}_sum")))
            cells = {o: 0 for o in ex.CONFUSION_OUTCOMES}
            for key, value in rows:
                if key.name == ex.STAGE_LABELLED and key.outcome in cells:
                    cells[key.outcome] += round(value)
            agg.confusion.merge(Confusion(**cells))
            for label, hist in self._score_buckets(rows).items():
                counts = promql.score_counts(hist, spec.score_bins)
                zeros = np.zeros_like(counts)
                agg.scores.add_counts(counts if label == "1" else zeros,
                                      zeros if label == "1" else counts)
            self._segments(rows, agg)
            if use_values:
                self._values(rows, agg, stage, role)

    @staticmethod
    def _getter(rows: Sequence[tuple[_Key, float]]) -> Callable[[str], float]:
        plain = {key.name: value for key, value in rows}
        return lambda name: plain.get(name, 0.0)

    @staticmethod
    def _buckets(rows: Iterable[tuple[_Key, float]], name: str) -> dict[float, float]:
        return {float(key.le): value for key, value in rows if key.name == name and key.le}

    @staticmethod
    def _score_buckets(rows: Iterable[tuple[_Key, float]]
                       ) -> dict[str, dict[float, float]]:
        out: dict[str, dict[float, float]] = {}
        for key, value in rows:
            if key.name == f"{ex.STAGE_SCORE}_bucket" and key.label in ("0", "1") and key.le:
                out.setdefault(key.label, {})[float(key.le)] = value
        return out

    def _segments(self, rows: Iterable[tuple[_Key, float]],
                  agg: RoleAggregate) -> None:
        for key, value in rows:
            if key.name != ex.STAGE_SEGMENT_LABELLED or key.field not in agg.segments \
                    or key.outcome not in ex.CONFUSION_OUTCOMES or key.value is None:
                continue
            conf = agg.segments[key.field].setdefault(key.value, Confusion())
            setattr(conf, key.outcome, getattr(conf, key.outcome) + round(value))

    def _values(self, rows: Sequence[tuple[_Key, float]], agg: RoleAggregate,
                stage: int, role: str) -> None:
        """CoMoments from the raw moments: count, sums and sums of products."""
        names = self.source.spec.value_names
        n = round(next((v for k, v in rows if k.name == ex.STAGE_VALUE_COUNT), 0.0))
        if n <= 0:
            return
        sums = {k.value_name: v for k, v in rows if k.name == ex.STAGE_VALUE_SUM}
        products = {(k.name_a, k.name_b): v for k, v in rows
                    if k.name == ex.STAGE_VALUE_PRODUCT_SUM}
        where = f'{{deployment="{self.source.deployment}",stage="{stage}",role="{role}"}}'
        mean = np.zeros(len(names))
        comoment = np.zeros((len(names), len(names)))
        for i, a in enumerate(names):
            if a not in sums:
                raise self.session.missing(self.query, f"{ex.STAGE_VALUE_SUM}{where} has no "
                                           f"name={a!r}: the collector does not log the "
                                           "policy's business value")
            mean[i] = sums[a] / n
        for i, a in enumerate(names):
            for j in range(i, len(names)):
                b = names[j]
                pair = (a, b) if a <= b else (b, a)
                if pair not in products:
                    raise self.session.missing(
                        self.query, f"{ex.STAGE_VALUE_PRODUCT_SUM}{where} has no "
                        f"name_a={pair[0]!r}, name_b={pair[1]!r}")
                c = products[pair] - sums[a] * sums[b] / n
                comoment[i, j] = comoment[j, i] = max(c, 0.0) if i == j else c
        if agg.values is not None:  # always: the spec has value names
            agg.values.merge(CoMoments.from_dict({"names": list(names), "n": n,
                                                  "mean": mean.tolist(),
                                                  "comoment": comoment.tolist()}))

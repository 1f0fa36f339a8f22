"""The Prometheus metrics source against a real Prometheus scraping a loopback exporter.

One Prometheus (1 s scrapes) and one exporter serve the whole module; each test uses its
own deployment name, so tests do not see each other's series. The test that stops
Prometheus starts its own.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest
from prometheus_fixture import (
    SELDON_BUCKETS,
    LoopbackExporter,
    StageData,
    running_prometheus,
)
from sklearn.metrics import roc_auc_score

from mlflow_kpigate.core.errors import KpigateError, PolicyError
from mlflow_kpigate.core.errors import MetricsUnavailable as ControllerMetricsUnavailable
from mlflow_kpigate.gate import Action, Verdict, evaluate
from mlflow_kpigate.kpis import AggregateSpec, LatencyHistogram, RoleAggregate
from mlflow_kpigate.metrics import exposition as ex
from mlflow_kpigate.metrics import promql
from mlflow_kpigate.metrics.prometheus import (
    MetricsUnavailable,
    PrometheusSource,
    StageWindow,
    check_policy,
)
from mlflow_kpigate.policy import RequestsFrom, policy_from_dict
from mlflow_kpigate.rollout.ports import SampleSource

NAMESPACE = "models"


@pytest.fixture
def sources():
    """Opens PrometheusSources and closes them at the end of the test."""
    opened: list[PrometheusSource] = []

    def open_source(url: str, deployment: str, policy: Any, windows: list[StageWindow],
                    seldon_version: int | None = None, **kw: Any) -> PrometheusSource:
        src = PrometheusSource(url, deployment, NAMESPACE, policy,
                               seldon_version=seldon_version, windows=lambda: windows, **kw)
        opened.append(src)
        return src

    yield open_source
    for src in opened:
        src.close()


def make_policy(kpis: list[dict[str, Any]], **sections: Any) -> Any:
    return policy_from_dict({
        "stages": [{"traffic": 5, "min_samples": {"requests": 100, "labelled": 100}},
                   {"traffic": 50, "min_samples": {"requests": 100, "labelled": 100}},
                   {"traffic": 100}],
        "kpis": kpis, **sections})


ERROR_RATE = {"name": "error_rate", "kind": "proportion", "metric": "error_rate",
              "role": "critical", "margin": 0.01}
ACCURACY = {"name": "accuracy", "kind": "proportion", "metric": "accuracy", "margin": 0.02}


def role_data(rng: np.random.Generator, n: int, accuracy: float, latency_median: float,
              error_share: float = 0.01, separation: float = 1.5) -> StageData:
    """Synthetic predictions: lognormal latency, labels, scores, a region, an amount."""
    y_true = rng.random(n) < 0.3
    correct = rng.random(n) < accuracy
    y_pred = np.where(correct, y_true, ~y_true)
    score = 1 / (1 + np.exp(-(rng.normal(0, 1, n) + separation * (2 * y_true - 1))))
    return StageData(
        latency=rng.lognormal(math.log(latency_median), 0.6, n),
        error=rng.random(n) < error_share,
        y_true=y_true.astype(int), y_pred=y_pred.astype(int), score=score,
        segments={"region": rng.choice(np.array(["eu", "us", "apac"]), n)},
        values={"amount": rng.gamma(2.0, 40.0, n)},
    )


def direct_aggregate(data: StageData, spec: AggregateSpec) -> RoleAggregate:
    """What the embedded collector would hold for the same predictions."""
    agg = RoleAggregate(spec)
    agg.add_requests(data.latency, data.error)
    agg.add_labelled(data.y_true, data.y_pred, data.score, segments=data.segments,
                     values=data.values)
    return agg


def publish(exporter: LoopbackExporter, deployment: str,
            stages: dict[int, dict[str, StageData]], current: int) -> None:
    exporter.set_collector_stage(deployment, current)
    for stage, roles in stages.items():
        for role, data in roles.items():
            exporter.set_kpigate_stage(deployment, stage, role, data)


# --------------------------------------------------------------------------------------
# Pure parts
# --------------------------------------------------------------------------------------

def test_counter_increase_adds_growth_across_restarts() -> None:
    samples = [(0.0, 5.0), (10.0, 7.0), (20.0, 12.0), (30.0, 2.0), (40.0, 4.0)]
    assert promql.counter_increase(samples, start=10.0) == 5 + 2 + 2
    # no sample before the window: the series was born inside it, counting from zero
    assert promql.counter_increase([(12.0, 3.0), (14.0, 8.0)], start=10.0) == 8


def test_render_replaces_only_known_placeholders_and_keeps_promql_braces() -> None:
    text = promql.render('sum(x{predictor="{role}",ns="{namespace}"}[{window}])',
                         {"role": "candidate", "namespace": "models", "window": "300s"})
    assert text == 'sum(x{predictor="candidate",ns="models"}[300s])'
    assert promql.selector("m", equal={"a": 'q"uote'}, regex={"b": "x|"},
                           not_regex={"c": "y"}) == 'm{a="q\\"uote",b=~"x|",c!~"y"}'
    assert promql.duration(0) == "1s"
    assert promql.duration(299.2) == "300s"


def test_collector_latency_buckets_map_one_to_one() -> None:
    """Each kpigate_stage_latency bucket is one histogram bucket with the same bounds."""
    rng = np.random.default_rng(3)
    latency = rng.lognormal(math.log(0.05), 0.8, 5000)
    template = promql.latency_layout(ex.LATENCY_BUCKETS)
    assert template.growth == pytest.approx(1.25)
    np.testing.assert_allclose(template.edges[:-1], ex.LATENCY_BUCKETS[:-1], rtol=1e-8)
    cum = {b: float((latency <= b).sum()) for b in ex.LATENCY_BUCKETS}
    cum[math.inf] = float(latency.size)
    hist = promql.latency_from_buckets(template, cum, float(latency.sum()))
    exact = LatencyHistogram(template.low, template.high, template.growth)
    exact.update(latency)
    np.testing.assert_array_equal(hist.counts, exact.counts)
    assert hist.mean() == pytest.approx(latency.mean(), rel=1e-12)
    # the log-scale mean from bucket middles is close to the exact one
    assert hist.mean_log() == pytest.approx(np.log(latency).mean(), abs=0.02)


def test_seldon_v2_latency_kpis_are_a_policy_error() -> None:
    p95 = {"name": "latency_p95", "kind": "quantile", "q": 0.95, "margin": "10%"}
    mean = {"name": "latency_mean", "kind": "mean", "source": "latency", "margin": "10%"}
    seldon = make_policy([ERROR_RATE, p95, mean],
                         metrics={"prometheus": {"requests_from": "seldon"}})
    with pytest.raises(PolicyError) as info:
        check_policy(seldon, seldon_version=2)
    assert [p[:8] for p in info.value.problems] == ["kpis[1]:", "kpis[2]:"]
    assert info.value.problems[0].startswith("kpis[1]: 'latency_p95' needs a latency "
                                             "distribution")
    assert "requests_from: kpigate" in info.value.problems[0]
    check_policy(seldon, seldon_version=1)  # the v1 executor has a histogram
    default = make_policy([ERROR_RATE, p95])
    check_policy(default, seldon_version=2)  # v2 defaults to the collector's series
    with pytest.raises(PolicyError, match="'seldon' needs a Seldon deployment"):
        check_policy(make_policy([ERROR_RATE], metrics={
            "prometheus": {"requests_from": "seldon"}}), seldon_version=None)


def test_source_needs_a_url_and_is_a_sample_source() -> None:
    policy = make_policy([ERROR_RATE])
    with pytest.raises(KpigateError, match="-C prometheus_url: not set"):
        PrometheusSource(None, "d", NAMESPACE, policy, seldon_version=1, windows=list)
    with_url = make_policy([ERROR_RATE], metrics={"prometheus": {"url": "http://127.0.0.1:9"}})
    src = PrometheusSource(None, "d", NAMESPACE, with_url, seldon_version=1, windows=list)
    try:
        assert isinstance(src, SampleSource)
        assert src.url == "http://127.0.0.1:9"
        assert src.requests_from is RequestsFrom.SELDON
        assert issubclass(MetricsUnavailable, ControllerMetricsUnavailable)
    finally:
        src.close()


# --------------------------------------------------------------------------------------
# The kpigate collector's series
# --------------------------------------------------------------------------------------

def test_collector_series_rebuild_the_aggregates(exporter, prometheus, sources) -> None:
    rng = np.random.default_rng(7)
    stages = {0: {"baseline": role_data(rng, 1500, 0.85, 0.040),
                  "candidate": role_data(rng, 700, 0.88, 0.050)},
              1: {"baseline": role_data(rng, 900, 0.85, 0.040),
                  "candidate": role_data(rng, 900, 0.88, 0.050)}}
    publish(exporter, "collected", stages, current=1)
    prometheus.sync(exporter)
    policy = make_policy([
        ERROR_RATE, ACCURACY,
        {"name": "auc", "kind": "auc", "role": "success"},
        {"name": "latency_p95", "kind": "quantile", "q": 0.95, "margin": "10%"},
        {"name": "fpr_fairness", "kind": "fairness", "metric": "false_positive_rate",
         "segment_by": "region", "margin": "10%"},
        {"name": "amount", "kind": "business", "numerator": "amount", "denominator": "count",
         "direction": "higher", "role": "info"},
    ])
    src = sources(prometheus.url, "collected", policy, [], seldon_version=None)
    assert src.requests_from is RequestsFrom.KPIGATE
    samples = src.stage_samples(time.time(), policy.evaluation.maturity)
    assert [s.stage_index for s in samples] == [0, 1]
    spec = AggregateSpec.from_policy(policy)
    for sample in samples:
        for role in ("baseline", "candidate"):
            got: RoleAggregate = getattr(sample, role)
            data = stages[sample.stage_index][role]
            want = direct_aggregate(data, spec)
            # counts are exact
            assert (got.requests, got.errors) == (want.requests, want.errors)
            assert got.confusion == want.confusion
            assert got.segments == want.segments
            assert got.latency.n == want.requests
            # business values: the raw moments rebuild the co-moments
            assert got.values.n == want.values.n
            assert got.values.mean("amount") == pytest.approx(want.values.mean("amount"),
                                                              rel=1e-9)
            assert got.values.cov("amount", "amount") == pytest.approx(
                want.values.cov("amount", "amount"), rel=1e-6)
            # AUC within the 100-bin resolution the histogram itself reports
            exact_auc = roc_auc_score(data.y_true, data.score)
            assert got.scores.n_pos + got.scores.n_neg == data.y_true.size
            assert abs(got.scores.auc() - exact_auc) <= got.scores.auc_error_bound() + 1e-12
            # p95 within one latency bucket (ratio 1.25) of the raw data's
            exact_p95 = float(np.quantile(data.latency, 0.95, method="inverted_cdf"))
            assert 1 / 1.25 <= got.latency.quantile(0.95) / exact_p95 <= 1.25
            assert got.latency.mean() == pytest.approx(data.latency.mean(), rel=1e-9)
    assert src.attempts == 1  # everything came from one query


# --------------------------------------------------------------------------------------
# Seldon's executor metrics, attributed by stage window
# --------------------------------------------------------------------------------------

def test_executor_requests_are_attributed_to_their_stage_window(exporter, prometheus,
                                                                sources) -> None:
    dep = "windowed"
    exporter.set_collector_stage(dep, 0)  # labelled KPIs still come from the collector
    start = time.time()
    # stage 0: baseline 30 served (5 of them 500) + 4 client errors; candidate 10 (2 x 500)
    exporter.add_executor_requests(dep, "baseline", [0.02] * 25)
    exporter.add_executor_requests(dep, "baseline", [0.30] * 5, code="500")
    exporter.add_executor_requests(dep, "baseline", [0.001] * 4, code="400")
    exporter.add_executor_requests(dep, "candidate", [0.04] * 8)
    exporter.add_executor_requests(dep, "candidate", [2.0] * 2, code="500")
    exporter.add_executor_requests(dep, "candidate", [0.01] * 3, service="feedback")
    exporter.add_executor_requests("other-deployment", "candidate", [0.04] * 50)
    prometheus.sync(exporter)
    boundary = time.time()
    # every scrape that could see stage-1 traffic is stamped after the boundary
    prometheus.scrape_after(exporter, boundary)
    # stage 1: 12 baseline, 5 candidate; then the candidate's pod restarts and serves 3
    exporter.add_executor_requests(dep, "baseline", [0.02] * 12)
    exporter.add_executor_requests(dep, "candidate", [0.04] * 5)
    prometheus.sync(exporter)
    exporter.restart_executor(dep, "candidate")
    exporter.add_executor_requests(dep, "candidate", [0.06] * 3)
    prometheus.sync(exporter)
    now = time.time()

    policy = make_policy([ERROR_RATE, ACCURACY])
    windows = [StageWindow(0, start, boundary), StageWindow(1, boundary)]
    src = sources(prometheus.url, dep, policy, windows, seldon_version=1)
    samples = {s.stage_index: s for s in src.stage_samples(now, 0)}
    assert sorted(samples) == [0, 1]
    s0, s1 = samples[0], samples[1]
    assert (s0.baseline.requests, s0.baseline.errors) == (30, 5)
    assert (s0.candidate.requests, s0.candidate.errors) == (10, 2)
    assert (s1.baseline.requests, s1.baseline.errors) == (12, 0)
    assert (s1.candidate.requests, s1.candidate.errors) == (8, 0)
    # the latency histogram holds the same requests, rounded up to the executor's buckets
    assert s0.baseline.latency.n == 30
    assert s0.baseline.latency.mean() == pytest.approx((25 * 0.02 + 5 * 0.30) / 30)
    assert s1.candidate.latency.mean() == pytest.approx((5 * 0.04 + 3 * 0.06) / 8)
    assert 0.02 <= s0.baseline.latency.quantile(0.5) <= 0.025 * 1.02
    assert SELDON_BUCKETS[5] <= s0.baseline.latency.quantile(0.99) <= SELDON_BUCKETS[6] * 1.02


# --------------------------------------------------------------------------------------
# Custom PromQL KPIs
# --------------------------------------------------------------------------------------

SESSIONS = 'sum(shop_sessions_total{predictor="{role}",stage="{stage}"})'
QUERY_KPIS = [
    ERROR_RATE,
    {"name": "conversion_rate", "kind": "proportion", "metric": "custom",
     "numerator": "conversions", "denominator": "sessions", "direction": "higher",
     "margin": "5%"},
    {"name": "revenue_per_session", "kind": "business", "numerator": "revenue",
     "denominator": "count", "direction": "higher", "margin": "5%"},
]
QUERIES = {
    "conversion_rate": {
        "count": SESSIONS,
        "sum": 'sum(shop_conversions_total{predictor="{role}",stage="{stage}"})'},
    "revenue_per_session": {
        "count": SESSIONS,
        "sum": 'sum(shop_revenue_sum{predictor="{role}",stage="{stage}"})',
        "sum_squares": 'sum(shop_revenue_squares{predictor="{role}",stage="{stage}"})'},
}


def test_custom_promql_feeds_business_kpis(exporter, prometheus, sources) -> None:
    rng = np.random.default_rng(11)
    truth: dict[str, dict[str, Any]] = {}
    for role, conv_p, mean in (("baseline", 0.10, 20.0), ("candidate", 0.14, 23.0)):
        sessions = 4000
        converted = rng.random(sessions) < conv_p
        revenue = np.where(converted, rng.gamma(2.0, mean / 2 / conv_p, sessions), 0.0)
        labels = {"predictor": role, "stage": "0"}
        exporter.set("shop_sessions_total", labels, sessions)
        exporter.set("shop_conversions_total", labels, converted.sum())
        exporter.set("shop_revenue_sum", labels, revenue.sum())
        exporter.set("shop_revenue_squares", labels, float(np.dot(revenue, revenue)))
        truth[role] = {"sessions": sessions, "converted": int(converted.sum()),
                       "revenue": revenue}
    # error_rate comes from the collector here (requests_from: kpigate)
    exporter.set_collector_stage("shop", 0)
    for role in ("baseline", "candidate"):
        exporter.set_kpigate_stage("shop", 0, role, StageData(
            latency=np.full(500, 0.05), error=np.zeros(500, bool),
            y_true=np.zeros(0, int), y_pred=np.zeros(0, int)))
    prometheus.sync(exporter)
    policy = make_policy(QUERY_KPIS, metrics={"prometheus": {"requests_from": "kpigate"},
                                              "queries": QUERIES})
    start = time.time() - 600
    src = sources(prometheus.url, "shop", policy, [StageWindow(0, start)], seldon_version=1)
    samples = src.stage_samples(time.time(), 0)
    assert len(samples) == 1
    for role in ("baseline", "candidate"):
        values = getattr(samples[0], role).values
        t = truth[role]
        assert values.n == t["sessions"]
        assert values.total("sessions") == pytest.approx(t["sessions"])
        assert values.total("conversions") == pytest.approx(t["converted"])
        assert values.mean("revenue") == pytest.approx(t["revenue"].mean(), rel=1e-9)
        assert values.cov("revenue", "revenue") == pytest.approx(
            t["revenue"].var(ddof=1), rel=1e-6)
    decision = evaluate(policy, 0, 3600.0, samples)
    by_kpi = {e.kpi: e for e in decision.evidence}
    conv = by_kpi["conversion_rate"]
    assert conv.baseline_value == pytest.approx(truth["baseline"]["converted"] / 4000)
    assert conv.candidate_value == pytest.approx(truth["candidate"]["converted"] / 4000)
    assert conv.verdict is Verdict.BETTER
    assert by_kpi["revenue_per_session"].candidate_value == pytest.approx(
        truth["candidate"]["revenue"].mean())


def test_custom_query_problems_are_unavailable_metrics(exporter, prometheus, sources) -> None:
    def source(queries: dict[str, Any]) -> PrometheusSource:
        policy = make_policy(QUERY_KPIS, metrics={"prometheus": {"requests_from": "kpigate"},
                                                  "queries": queries})
        return sources(prometheus.url, "shop", policy, [StageWindow(0, time.time() - 60)])

    two_series = 'shop_sessions_total{predictor="{role}",stage=~"{stage}|9"} or ' \
                 'label_replace(shop_sessions_total{predictor="{role}"}, "x", "y", "", "")'
    src = source({**QUERIES, "conversion_rate": {**QUERIES["conversion_rate"],
                                                 "sum": two_series}})
    with pytest.raises(MetricsUnavailable, match=r"returned 2 series.*wrap it in sum") as info:
        src.stage_samples(time.time(), 0)
    assert info.value.kind == "malformed"
    nothing = 'sum(shop_nothing_total{predictor="{role}",stage="{stage}"})'
    src = source({**QUERIES, "conversion_rate": {**QUERIES["conversion_rate"], "sum": nothing}})
    with pytest.raises(MetricsUnavailable, match=r"returned no data.*or vector\(0\)") as info:
        src.stage_samples(time.time(), 0)
    assert info.value.kind == "missing"
    assert "shop_nothing_total" in info.value.query
    assert 'predictor="baseline"' in info.value.query  # the rendered query
    broken = 'sum(shop_sessions_total{predictor="{role}",stage="{stage}"}'
    src = source({**QUERIES, "conversion_rate": {**QUERIES["conversion_rate"], "sum": broken}})
    with pytest.raises(MetricsUnavailable, match="rejected by Prometheus") as info:
        src.stage_samples(time.time(), 0)
    assert info.value.kind == "query_error"
    assert src.attempts == info.value.attempts
    calls_before_error = src.attempts - 1
    assert calls_before_error >= 1  # the bad query itself was sent once, not retried


# --------------------------------------------------------------------------------------
# Seldon v2
# --------------------------------------------------------------------------------------

def test_seldon_v2_counts_and_mean_latency(exporter, prometheus, sources) -> None:
    start = time.time()
    exporter.add_v2_requests("v2dep-baseline", [0.03] * 40)
    exporter.add_v2_requests("v2dep-baseline", [0.5] * 2, code="500")
    exporter.add_v2_requests("v2dep-candidate", [0.05] * 20)
    exporter.add_v2_requests("v2dep-candidate", [0.01] * 6, code="422")
    exporter.set_collector_stage("v2dep", 0)
    prometheus.sync(exporter)
    policy = make_policy([ERROR_RATE, ACCURACY],
                         metrics={"prometheus": {"requests_from": "seldon"}})
    src = sources(prometheus.url, "v2dep", policy, [StageWindow(0, start)], seldon_version=2)
    (sample,) = src.stage_samples(time.time(), 0)
    assert (sample.baseline.requests, sample.baseline.errors) == (42, 2)
    assert (sample.candidate.requests, sample.candidate.errors) == (20, 0)
    assert sample.baseline.latency.mean() == pytest.approx((40 * 0.03 + 2 * 0.5) / 42)

    # without a code label errors cannot be counted: error_rate would be blind
    exporter.add_v2_requests("nocode-baseline", [0.03] * 5, code=None)
    exporter.set_collector_stage("nocode", 0)
    prometheus.sync(exporter)
    src = sources(prometheus.url, "nocode", policy, [StageWindow(0, start)], seldon_version=2)
    with pytest.raises(MetricsUnavailable, match="has no code label") as info:
        src.stage_samples(time.time(), 0)
    assert info.value.kind == "malformed"


# --------------------------------------------------------------------------------------
# Missing, NaN, unreachable
# --------------------------------------------------------------------------------------

def test_missing_series_are_unavailable_not_zero(exporter, prometheus, sources) -> None:
    policy = make_policy([ERROR_RATE, ACCURACY])
    src = sources(prometheus.url, "nobody", policy, [StageWindow(0, time.time() - 60)],
                  seldon_version=1)
    with pytest.raises(MetricsUnavailable, match="no kpigate_collector_stage series for "
                                                 "deployment='nobody'") as info:
        src.stage_samples(time.time(), 0)
    assert info.value.kind == "missing"
    assert 'deployment="nobody"' in info.value.query
    # the collector is there, but Seldon's executor has never been scraped for it
    exporter.set_collector_stage("nobody", 0)
    prometheus.sync(exporter)
    with pytest.raises(MetricsUnavailable, match="no Seldon executor series") as info:
        src.stage_samples(time.time(), 0)
    assert info.value.query.startswith(
        'seldon_api_executor_server_requests_seconds_count{deployment_name="nobody"')


def test_nan_values_are_unavailable(exporter, prometheus, sources) -> None:
    exporter.set_collector_stage("nan", 0)
    exporter.set(ex.STAGE_LABELLED, {"deployment": "nan", "stage": "0", "role": "candidate",
                                     "outcome": "tp"}, float("nan"))
    prometheus.sync(exporter)
    policy = make_policy([ERROR_RATE, ACCURACY])
    src = sources(prometheus.url, "nan", policy, [], seldon_version=None)
    with pytest.raises(MetricsUnavailable, match=r'kpigate_stage_labelled_total.*outcome="tp"'
                                                 r'.*is NaN') as info:
        src.stage_samples(time.time(), 0)
    assert info.value.kind == "not_finite"


class FakeTime:
    """A clock that only moves when the source sleeps: retry timing without waiting."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_stopped_prometheus_holds_after_bounded_retries(exporter, tmp_path, sources) -> None:
    exporter.set_collector_stage("outage", 0)
    exporter.set_kpigate_stage("outage", 0, "candidate", StageData(
        latency=np.full(10, 0.05), error=np.zeros(10, bool), y_true=np.ones(10, int),
        y_pred=np.ones(10, int)))
    policy = make_policy([ERROR_RATE, ACCURACY])
    with running_prometheus([exporter.target], tmp_path / "own") as own:
        own.sync(exporter)
        fake = FakeTime()
        src = sources(own.url, "outage", policy, [], retries=2, max_wait=60,
                      clock=fake.clock, sleep=fake.sleep)
        (sample,) = src.stage_samples(time.time(), 0)
        assert sample.candidate.confusion.tp == 10
        assert src.attempts == 1
        own.stop()
        assert not own.running
        with pytest.raises(MetricsUnavailable, match=r"unreachable.*gave up after 3 attempts"
                           ) as info:
            src.stage_samples(time.time(), 0)
        assert info.value.kind == "unreachable"
        assert info.value.attempts == src.attempts == 3  # 1 + retries
        assert fake.sleeps == [0.5, 1.0]  # exponential backoff between them
        assert isinstance(info.value, ControllerMetricsUnavailable)  # the controller holds

        # max_wait bounds the total: with 10 retries allowed, the 2.5 s budget ends first
        fake.now, fake.sleeps = 0.0, []
        src = sources(own.url, "outage", policy, [], retries=10, max_wait=2.5,
                      clock=fake.clock, sleep=fake.sleep)
        with pytest.raises(MetricsUnavailable, match=r"next retry would pass .*max_wait"
                           ) as info:
            src.stage_samples(time.time(), 0)
        assert info.value.attempts == 3
        assert fake.sleeps == [0.5, 1.0]  # the 2 s wait would end past 2.5 s
        assert fake.now <= 2.5


@contextmanager
def scripted_prometheus(replies: list[tuple[int, dict[str, Any]]]) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 answering /api/v1/query with ``replies`` in turn (the
    last one repeats): Prometheus' own 5xx answers cannot be provoked on demand."""
    served: list[int] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, body = replies[min(len(served), len(replies) - 1)]
            served.append(status)
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_http_5xx_is_retried_and_then_reported(sources) -> None:
    unavailable = (503, {"status": "error", "errorType": "unavailable",
                         "error": "TSDB not ready"})
    ok = (200, {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {"__name__": ex.COLLECTOR_STAGE, "deployment": "flaky"},
         "value": [1.0, "0"]},
        {"metric": {"__name__": ex.STAGE_LABELLED, "deployment": "flaky", "stage": "0",
                    "role": "candidate", "outcome": "fn"}, "value": [1.0, "4"]}]}})
    policy = make_policy([ERROR_RATE, ACCURACY])
    with scripted_prometheus([unavailable, unavailable, ok]) as url:
        fake = FakeTime()
        src = sources(url, "flaky", policy, [], retries=3, clock=fake.clock, sleep=fake.sleep)
        (sample,) = src.stage_samples(time.time(), 0)
        assert sample.candidate.confusion.fn == 4
        assert src.attempts == 3
        assert fake.sleeps == [0.5, 1.0]
    with scripted_prometheus([unavailable]) as url:
        src = sources(url, "flaky", policy, [], retries=1, clock=fake.clock, sleep=fake.sleep)
        with pytest.raises(MetricsUnavailable, match="HTTP 503 from Prometheus: TSDB not "
                                                     "ready; gave up after 2 attempts") as info:
            src.stage_samples(time.time(), 0)
        assert info.value.kind == "http"


def test_stage_window_validation() -> None:
    assert StageWindow(0, 10.0).end is None
    with pytest.raises(ValueError, match="end must be a finite time >= start"):
        StageWindow(1, 10.0, 5.0)
    with pytest.raises(ValueError, match="stage_index must be an integer >= 0"):
        StageWindow(-1, 10.0)
    with pytest.raises(ValueError, match="start must be a finite time"):
        StageWindow(0, math.nan)


# --------------------------------------------------------------------------------------
# The gate decides from what Prometheus holds
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("deployment", "candidate_accuracy", "action"), [
    ("gate-better", 0.93, Action.PROMOTE),
    ("gate-worse", 0.70, Action.ROLLBACK),
])
def test_gate_decides_from_prometheus(exporter, prometheus, sources, deployment,
                                      candidate_accuracy, action) -> None:
    rng = np.random.default_rng(5)
    stages = {0: {"baseline": role_data(rng, 3000, 0.85, 0.04, error_share=0.0),
                  "candidate": role_data(rng, 3000, candidate_accuracy, 0.04,
                                         error_share=0.0)}}
    publish(exporter, deployment, stages, current=0)
    prometheus.sync(exporter)
    policy = make_policy([ERROR_RATE, ACCURACY])
    src = sources(prometheus.url, deployment, policy, [], seldon_version=None)
    samples = src.stage_samples(time.time(), 0)
    decision = evaluate(policy, 0, 3600.0, samples)
    accuracy = next(e for e in decision.evidence if e.kpi == "accuracy")
    assert decision.action is action, decision.reason
    if action is Action.PROMOTE:
        assert accuracy.verdict in (Verdict.BETTER, Verdict.NON_INFERIOR)
        assert accuracy.lower > -0.02
    else:
        assert accuracy.verdict is Verdict.WORSE
        assert accuracy.upper < -0.02

"""Tests of the streaming KPI aggregators against scikit-learn / numpy on the same arrays."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from mlflow_kpigate.kpis import (
    RATE_METRICS,
    AggregateSpec,
    CoMoments,
    Confusion,
    LatencyHistogram,
    Moments,
    RoleAggregate,
    ScoreHistogram,
)

SIZES = [0, 1, 2, 7, 100, 5_000, 200_000]


def _labels(rng: np.random.Generator, n: int, prevalence: float) -> np.ndarray:
    return rng.random(n) < prevalence


def _scores(rng: np.random.Generator, y: np.ndarray, separation: float = 2.5) -> np.ndarray:
    """Continuous scores in (0, 1), higher for positives."""
    return 1.0 / (1.0 + np.exp(-rng.normal(-1.5 + separation * y, 1.2)))


def _json_round_trip(d: dict) -> dict:
    return json.loads(json.dumps(d, allow_nan=False))


def _same(a: float, b: float, tol: float = 1e-12) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= tol


# -- Confusion ----------------------------------------------------------------------------


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("prevalence", [0.0, 0.015, 0.5, 1.0])
def test_confusion_matches_sklearn(n: int, prevalence: float) -> None:
    rng = np.random.default_rng(1000 + n)
    y = _labels(rng, n, prevalence)
    pred = rng.random(n) < np.where(y, 0.8, 0.1)
    c = Confusion()
    c.update(y.astype(np.int64), pred)  # mixed encodings on purpose
    assert c.n == n
    if n == 0:
        for metric in ("precision", "recall", "f1", "accuracy", "false_positive_rate"):
            assert math.isnan(getattr(c, metric)())
        return
    tn, fp, fn, tp = confusion_matrix(y, pred, labels=[False, True]).ravel()
    assert (c.tp, c.fp, c.tn, c.fn) == (tp, fp, tn, fn)
    assert (c.positives, c.negatives, c.predicted_positives) == (tp + fn, fp + tn, tp + fp)
    nan = np.nan
    assert _same(c.precision(), precision_score(y, pred, zero_division=nan))
    assert _same(c.recall(), recall_score(y, pred, zero_division=nan))
    assert _same(c.f1(), f1_score(y, pred, zero_division=nan))
    assert _same(c.accuracy(), accuracy_score(y, pred))
    # The other rates against the sklearn matrix with numpy's nan-on-0/0.
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = {
            "false_positive_rate": np.float64(fp) / (fp + tn),
            "false_negative_rate": np.float64(fn) / (fn + tp),
            "true_negative_rate": np.float64(tn) / (tn + fp),
            "positive_rate": np.float64(tp + fp) / n,
        }
    for metric, value in expected.items():
        assert _same(getattr(c, metric)(), float(value))


def test_confusion_rate_pairs_and_unknown_metric() -> None:
    c = Confusion(tp=5, fp=3, tn=90, fn=2)
    assert c.rate("precision") == (5, 8)
    assert c.rate("recall") == (5, 7)
    assert c.rate("accuracy") == (95, 100)
    assert c.rate("false_positive_rate") == (3, 93)
    assert c.rate("false_negative_rate") == (2, 7)
    assert c.rate("true_negative_rate") == (90, 93)
    assert c.rate("positive_rate") == (8, 100)
    for metric in RATE_METRICS:
        s, t = c.rate(metric)
        assert getattr(c, metric)() == s / t
    with pytest.raises(ValueError, match="unknown rate metric 'f1'"):
        c.rate("f1")


def test_confusion_merge_copy_and_round_trip() -> None:
    rng = np.random.default_rng(7)
    y, pred = _labels(rng, 10_000, 0.2), _labels(rng, 10_000, 0.3)
    whole = Confusion()
    whole.update(y, pred)
    merged = Confusion()
    for chunk in np.array_split(np.arange(y.size), 7):
        part = Confusion()
        part.update(y[chunk], pred[chunk])
        merged.merge(part)
    assert merged == whole
    clone = whole.copy()
    clone.update([1], [1])
    assert clone.tp == whole.tp + 1
    assert Confusion.from_dict(_json_round_trip(whole.to_dict())) == whole


@pytest.mark.parametrize(
    ("y_true", "y_pred", "match"),
    [
        ([0, 2], [0, 1], "y_true must contain only 0/1.*found 2"),
        ([0, 1], [0.5, 1.0], "y_pred must contain only 0/1.*found 0.5"),
        ([0, 1], [np.nan, 1.0], "y_pred must contain only 0/1"),
        (["0", "1"], [0, 1], "y_true must contain only 0/1.*dtype"),
        ([0, 1, 1], [0, 1], "same length"),
        ([[0, 1]], [[0, 1]], "y_true must be one-dimensional"),
        ([0, None], [0, 1], "y_true must contain only 0/1"),
        ([-1, 1], [0, 1], "found -1"),
    ],
)
def test_confusion_rejects_bad_input(y_true: list, y_pred: list, match: str) -> None:
    c = Confusion()
    with pytest.raises(ValueError, match=match):
        c.update(y_true, y_pred)
    assert c.n == 0


def test_confusion_from_dict_validates() -> None:
    with pytest.raises(ValueError, match="missing 'fn'"):
        Confusion.from_dict({"tp": 1, "fp": 1, "tn": 1})
    with pytest.raises(ValueError, match="'tp' must be a non-negative integer"):
        Confusion.from_dict({"tp": -1, "fp": 1, "tn": 1, "fn": 0})


# -- ScoreHistogram -----------------------------------------------------------------------


def _exact_delong_variance(y: np.ndarray, s: np.ndarray) -> float:
    """Unbinned DeLong variance from per-example placements (ties count 1/2)."""
    pos, neg = np.sort(s[y]), np.sort(s[~y])
    v10 = (np.searchsorted(neg, pos, side="left") + np.searchsorted(neg, pos, side="right")) / (
        2 * neg.size
    )
    v01 = (
        (pos.size - np.searchsorted(pos, neg, side="right"))
        + (pos.size - np.searchsorted(pos, neg, side="left"))
    ) / (2 * pos.size)
    return np.var(v10, ddof=1) / pos.size + np.var(v01, ddof=1) / neg.size


@pytest.mark.parametrize("n", [50, 1_000, 20_000, 300_000])
@pytest.mark.parametrize("prevalence", [0.015, 0.3])
def test_auc_within_bound_of_sklearn(n: int, prevalence: float) -> None:
    rng = np.random.default_rng(n)
    y = _labels(rng, n, prevalence)
    y[:2], y[2:4] = True, False  # both classes present even for tiny n
    s = _scores(rng, y)
    h = ScoreHistogram()
    h.update(y, s)
    assert (h.n_pos, h.n_neg) == (int(y.sum()), int((~y).sum()))
    bound = h.auc_error_bound()
    assert abs(h.auc() - roc_auc_score(y, s)) <= bound + 1e-12
    if n >= 20_000:
        assert bound < 2e-3


def test_auc_exact_on_bin_centres_and_delong_matches_unbinned() -> None:
    rng = np.random.default_rng(3)
    h = ScoreHistogram(bins=200)
    y = _labels(rng, 40_000, 0.05)
    raw = np.clip(_scores(rng, y, separation=1.5), 0, 1)
    s = h.bin_centres()[h.bin_index(raw)]  # already discretised: binning loses nothing
    h.update(y, s)
    assert abs(h.auc() - roc_auc_score(y, s)) < 1e-12
    exact = _exact_delong_variance(y, s)
    assert h.auc_variance() == pytest.approx(exact, rel=1e-10, abs=0)


def test_delong_variance_close_to_bootstrap() -> None:
    rng = np.random.default_rng(11)
    y = _labels(rng, 3_000, 0.2)
    s = _scores(rng, y, separation=1.0)
    h = ScoreHistogram()
    h.update(y, s)
    boot = []
    for _ in range(300):
        i = rng.integers(0, y.size, y.size)
        boot.append(roc_auc_score(y[i], s[i]))
    # 300 replicates estimate a variance to ~+-8% (one sd); allow a generous 35%.
    assert h.auc_variance() == pytest.approx(np.var(boot, ddof=1), rel=0.35)


def test_score_histogram_edge_cases() -> None:
    h = ScoreHistogram(bins=10)
    assert math.isnan(h.auc())
    assert math.isnan(h.auc_variance())
    assert math.isnan(h.auc_error_bound())
    h.update([], [])
    h.update([1, 1, 1], [0.1, 0.5, 0.9])  # one class only
    assert math.isnan(h.auc())
    h.update([0], [0.3])
    assert h.auc() == pytest.approx(2 / 3)
    assert math.isnan(h.auc_variance())  # a single negative has no sample variance
    # Out-of-range and infinite scores land in the edge bins.
    g = ScoreHistogram(bins=4)
    g.update([1, 0, 1, 0], [-3.0, -np.inf, 1.0, np.inf])
    assert g.pos.tolist() == [1, 0, 0, 1]
    assert g.neg.tolist() == [1, 0, 0, 1]
    assert g.auc() == 0.5
    assert g.auc_error_bound() == 0.25  # two same-bin pairs out of four, 1/2 each


def test_score_histogram_merge_copy_round_trip() -> None:
    rng = np.random.default_rng(5)
    y = _labels(rng, 50_000, 0.1)
    s = _scores(rng, y)
    whole = ScoreHistogram()
    whole.update(y, s)
    merged = ScoreHistogram()
    for chunk in np.array_split(np.arange(y.size), 9):
        part = ScoreHistogram()
        part.update(y[chunk], s[chunk])
        merged.merge(part)
    np.testing.assert_array_equal(merged.pos, whole.pos)
    np.testing.assert_array_equal(merged.neg, whole.neg)
    assert merged.auc() == whole.auc()
    d = whole.to_dict()
    assert len(d["pos"]["index"]) == np.count_nonzero(whole.pos)  # stored sparsely
    back = ScoreHistogram.from_dict(_json_round_trip(d))
    np.testing.assert_array_equal(back.pos, whole.pos)
    np.testing.assert_array_equal(back.neg, whole.neg)
    clone = whole.copy()
    clone.update([1], [0.5])
    assert clone.n_pos == whole.n_pos + 1


def test_score_histogram_rejects_bad_input() -> None:
    h = ScoreHistogram()
    with pytest.raises(ValueError, match="score contains NaN"):
        h.update([0, 1], [0.2, np.nan])
    with pytest.raises(ValueError, match="same length"):
        h.update([0, 1], [0.2])
    with pytest.raises(ValueError, match="y_true must contain only 0/1"):
        h.update([0, 3], [0.2, 0.4])
    with pytest.raises(ValueError, match="score must be numeric"):
        h.update([0, 1], ["a", "b"])
    assert h.n_pos + h.n_neg == 0
    with pytest.raises(ValueError, match="score binning differs"):
        h.merge(ScoreHistogram(bins=10))
    with pytest.raises(ValueError, match="bins must be a positive integer"):
        ScoreHistogram(bins=0)
    with pytest.raises(ValueError, match="low < high"):
        ScoreHistogram(low=1.0, high=0.0)
    bad = h.to_dict()
    bad["pos"] = {"index": [1000], "count": [1]}
    with pytest.raises(ValueError, match=r"scores\.pos: bin index out of range"):
        ScoreHistogram.from_dict(bad)


# -- LatencyHistogram ---------------------------------------------------------------------


def _latencies(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.exp(rng.normal(math.log(0.085), 0.6, n))


def test_latency_layout() -> None:
    h = LatencyHistogram()
    assert h.edges[0] == 1e-4
    assert h.edges[-1] >= 100.0 > h.edges[-2]
    np.testing.assert_allclose(h.edges[1:] / h.edges[:-1], 1.02)
    assert h.counts.dtype == np.int64
    assert h.counts.size == h.edges.size + 1
    exact = LatencyHistogram(low=1.0, high=1024.0, growth=2.0)
    assert exact.edges.tolist() == [2.0**i for i in range(11)]


@pytest.mark.parametrize("n", [1_000, 30_000, 400_000])
@pytest.mark.parametrize("growth", [1.02, 1.1])
def test_latency_quantiles_and_moments(n: int, growth: float) -> None:
    rng = np.random.default_rng(n)
    x = _latencies(rng, n)
    h = LatencyHistogram(growth=growth)
    h.update(x)
    assert h.n == n
    for q in (0.5, 0.95, 0.99):
        assert h.quantile(q) == pytest.approx(np.quantile(x, q), rel=growth - 1)
        assert h.quantile(q) == pytest.approx(
            np.quantile(x, q, method="inverted_cdf"), rel=growth - 1
        )
    assert h.quantile(0) == x.min()
    assert h.quantile(1) == x.max()
    assert abs(h.mean_log() - np.log(x).mean()) < 1e-9
    assert h.var_log() == pytest.approx(np.var(np.log(x), ddof=1), rel=1e-9)
    assert h.mean() == pytest.approx(x.mean(), rel=1e-12)


def test_latency_count_above_is_exact() -> None:
    rng = np.random.default_rng(2)
    h = LatencyHistogram()
    x = np.concatenate(
        [
            _latencies(rng, 100_000),
            h.edges[300:400],  # values exactly on edges
            np.nextafter(h.edges[300:400], 0),  # and just below them
            [1e-6, 5e-5, 150.0, 1e4],  # underflow and overflow
        ]
    )
    rng.shuffle(x)
    h.update(x)
    for threshold in [1e-6, 1e-4, 0.01, 0.05, 0.085, 0.1, 0.25, h.edges[350], 99.0, 500.0]:
        for direction in ("up", "down"):
            count, edge = h.count_above(threshold, direction)
            assert edge == h.snap(threshold, direction)
            assert count == int(np.count_nonzero(x >= edge))
            if h.edges[0] <= threshold <= h.edges[-1]:
                assert edge >= threshold if direction == "up" else edge <= threshold
    assert h.snap(h.edges[350], "up") == h.snap(h.edges[350], "down") == h.edges[350]
    assert h.snap(1e-9, "down") == h.edges[0]  # clamped to the edge range
    assert h.snap(1e9, "up") == h.edges[-1]


@pytest.mark.parametrize(
    ("low", "high", "growth"),
    [(1e-4, 100.0, 1.02), (1e3, 1.001e3, 1 + 1e-8), (1e-9, 1e9, 1.5), (0.5, 2.0, 1.0001)],
)
def test_latency_bucket_assignment_matches_binary_search(
    low: float, high: float, growth: float
) -> None:
    h = LatencyHistogram(low, high, growth)
    rng = np.random.default_rng(12)
    picks = h.edges[rng.integers(0, h.edges.size, 2_000)]
    x = np.concatenate(
        [
            picks,
            np.nextafter(picks, 0),
            np.nextafter(picks, np.inf),
            np.exp(rng.uniform(math.log(low) - 1, math.log(h.edges[-1]) + 1, 20_000)),
        ]
    )
    h.update(x)
    expected = np.bincount(np.searchsorted(h.edges, x, side="right"), minlength=h.counts.size)
    np.testing.assert_array_equal(h.counts, expected)


def test_latency_outside_range_and_tiny() -> None:
    h = LatencyHistogram()
    assert math.isnan(h.quantile(0.5))
    assert math.isnan(h.mean_log())
    assert math.isnan(h.mean())
    h.update(0.2)
    assert h.n == 1
    assert h.quantile(0.5) == 0.2
    assert math.isnan(h.var_log())
    g = LatencyHistogram()
    g.update([1e-6, 2e-6, 4e-6, 500.0])
    assert g.counts[0] == 3
    assert g.counts[-1] == 1
    assert 1e-6 <= g.quantile(0.5) <= 1e-4  # interpolated between min and low
    assert g.quantile(1.0) == 500.0


def test_latency_merge_copy_round_trip() -> None:
    rng = np.random.default_rng(9)
    x = _latencies(rng, 100_000)
    whole = LatencyHistogram()
    whole.update(x)
    merged = LatencyHistogram()
    for chunk in np.array_split(x, 13):
        part = LatencyHistogram()
        part.update(chunk)
        merged.merge(part)
    merged.merge(LatencyHistogram())  # empty is a no-op
    np.testing.assert_array_equal(merged.counts, whole.counts)
    assert merged.n == whole.n
    assert merged.mean_log() == pytest.approx(whole.mean_log(), rel=1e-13)
    assert merged.var_log() == pytest.approx(whole.var_log(), rel=1e-11)
    assert merged.mean() == pytest.approx(whole.mean(), rel=1e-13)
    assert merged.quantile(0.99) == whole.quantile(0.99)
    back = LatencyHistogram.from_dict(_json_round_trip(whole.to_dict()))
    np.testing.assert_array_equal(back.counts, whole.counts)
    assert back.to_dict() == whole.to_dict()
    assert LatencyHistogram.from_dict(_json_round_trip(LatencyHistogram().to_dict())).n == 0
    clone = whole.copy()
    clone.update([1.0])
    assert clone.n == whole.n + 1


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ([0.1, 0.0], "latency_s must be > 0 seconds, found 0.0"),
        ([0.1, -2.0], "latency_s must be > 0 seconds"),
        ([0.1, np.nan], "latency_s must be finite"),
        ([0.1, np.inf], "latency_s must be finite"),
        ([[0.1]], "latency_s must be one-dimensional"),
    ],
)
def test_latency_rejects_bad_input(values: list, match: str) -> None:
    h = LatencyHistogram()
    with pytest.raises(ValueError, match=match):
        h.update(values)
    assert h.n == 0
    assert h.counts.sum() == 0


def test_latency_rejects_bad_arguments() -> None:
    h = LatencyHistogram()
    with pytest.raises(ValueError, match="direction must be 'up' or 'down'"):
        h.snap(0.1, "sideways")
    with pytest.raises(ValueError, match="threshold must be a finite number > 0"):
        h.count_above(-1.0)
    with pytest.raises(ValueError, match="q must be in"):
        h.quantile(1.5)
    with pytest.raises(ValueError, match="latency bucket layout differs"):
        h.merge(LatencyHistogram(growth=1.05))
    with pytest.raises(ValueError, match="growth must be"):
        LatencyHistogram(growth=1.0)
    bad = h.to_dict()
    bad["n"] = 3
    with pytest.raises(ValueError, match="do not add up"):
        LatencyHistogram.from_dict(bad)


# -- Moments / CoMoments ------------------------------------------------------------------


def test_moments_match_numpy_and_merge() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(1e6, 3.0, 100_000)  # large offset: checks the numerically careful path
    whole = Moments()
    whole.update(x)
    assert whole.n == x.size
    assert whole.mean == pytest.approx(x.mean(), rel=1e-14)
    assert whole.variance() == pytest.approx(np.var(x, ddof=1), rel=1e-9)
    merged = Moments()
    for chunk in np.array_split(x, 11):
        part = Moments()
        part.update(chunk)
        merged.merge(part)
    assert merged.variance() == pytest.approx(whole.variance(), rel=1e-9)
    assert Moments.from_dict(_json_round_trip(whole.to_dict())) == whole
    one = Moments()
    one.update(3.0)
    assert math.isnan(one.variance())
    assert one.mean == 3.0
    with pytest.raises(ValueError, match="x must be finite"):
        one.update([1.0, np.inf])


def test_comoments_match_numpy_cov_and_merge() -> None:
    rng = np.random.default_rng(6)
    n = 60_000
    amount = rng.lognormal(3, 1, n)
    loss = amount * (rng.random(n) < 0.02)
    fee = 0.01 * amount + rng.normal(0, 0.1, n)
    values = {"amount": amount, "loss": loss, "fee": fee}
    names = ("amount", "loss", "fee")
    whole = CoMoments(names)
    whole.update({**values, "ignored": np.zeros(3)})  # extra keys are ignored
    merged = CoMoments(names)
    for chunk in np.array_split(np.arange(n), 8):
        part = CoMoments(names)
        part.update({k: v[chunk] for k, v in values.items()})
        merged.merge(part)
    expected = np.cov(np.vstack([amount, loss, fee]))
    for agg in (whole, merged, CoMoments.from_dict(_json_round_trip(whole.to_dict()))):
        assert agg.n == n
        for i, a in enumerate(names):
            assert agg.mean(a) == pytest.approx(values[a].mean(), rel=1e-12)
            assert agg.total(a) == pytest.approx(values[a].sum(), rel=1e-12)
            for j, b in enumerate(names):
                assert agg.cov(a, b) == pytest.approx(expected[i, j], rel=1e-9, abs=1e-12)
    assert whole.copy().cov("amount", "loss") == whole.cov("amount", "loss")
    empty = CoMoments(names)
    assert math.isnan(empty.mean("loss"))
    assert math.isnan(empty.cov("loss", "fee"))


def test_comoments_rejects_bad_input() -> None:
    c = CoMoments(("a", "b"))
    with pytest.raises(ValueError, match="values is missing 'b'"):
        c.update({"a": [1.0]})
    with pytest.raises(ValueError, match=r"values\['b'\] has length 1, expected 2"):
        c.update({"a": [1.0, 2.0], "b": [1.0]})
    with pytest.raises(ValueError, match=r"values\['a'\] must be finite"):
        c.update({"a": [np.nan], "b": [1.0]})
    assert c.n == 0
    with pytest.raises(ValueError, match="names differ"):
        c.merge(CoMoments(("a", "c")))
    with pytest.raises(ValueError, match="unknown value name 'z'"):
        c.mean("z")
    with pytest.raises(ValueError, match="unique"):
        CoMoments(("a", "a"))


# -- RoleAggregate ------------------------------------------------------------------------

SPEC = AggregateSpec(segment_fields=("region", "channel"), value_names=("amount", "loss"))
REGIONS = np.array(["eu", "us", "apac"])


def _batch(rng: np.random.Generator, n: int) -> dict:
    y = _labels(rng, n, 0.015)
    s = _scores(rng, y, separation=3.0)
    amount = rng.lognormal(3, 1, n)
    return {
        "y_true": y,
        "y_pred": s >= 0.5,
        "score": s,
        "segments": {
            "region": REGIONS[rng.integers(0, 3, n)],
            "channel": rng.integers(0, 2, n),  # non-string values are keyed by str()
        },
        "values": {"amount": amount, "loss": amount * y},
    }


def _requests(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    return _latencies(rng, n), rng.random(n) < 0.002


def test_role_aggregate_matches_sklearn_per_segment() -> None:
    rng = np.random.default_rng(21)
    batch = _batch(rng, 50_000)
    latency, error = _requests(rng, 80_000)
    agg = RoleAggregate(SPEC)
    agg.add_requests(latency, error)
    agg.add_labelled(**batch)
    assert (agg.requests, agg.errors) == (80_000, int(error.sum()))
    assert agg.error_rate() == error.mean()
    assert agg.latency.n == 80_000
    assert agg.labelled == 50_000
    y, pred = batch["y_true"], batch["y_pred"]
    assert agg.scores.n_pos == y.sum()
    assert agg.values is not None
    assert agg.values.total("loss") == pytest.approx(batch["values"]["loss"].sum())
    assert set(agg.segments) == {"region", "channel"}
    assert set(agg.segments["channel"]) == {"0", "1"}
    for field, column in batch["segments"].items():
        for value in np.unique(column):
            mask = column == value
            tn, fp, fn, tp = confusion_matrix(y[mask], pred[mask], labels=[False, True]).ravel()
            conf = agg.segments[field][str(value)]
            assert (conf.tp, conf.fp, conf.tn, conf.fn) == (tp, fp, tn, fn)


def test_role_aggregate_merge_equals_one_shot_and_round_trips() -> None:
    rng = np.random.default_rng(22)
    batches = [_batch(rng, n) for n in (0, 1, 10, 3_000, 20_000)]
    requests = [_requests(rng, n) for n in (0, 5, 40_000)]
    whole = RoleAggregate(SPEC)
    whole.add_labelled(
        y_true=np.concatenate([b["y_true"] for b in batches]),
        y_pred=np.concatenate([b["y_pred"] for b in batches]),
        score=np.concatenate([b["score"] for b in batches]),
        segments={
            f: np.concatenate([b["segments"][f] for b in batches]) for f in SPEC.segment_fields
        },
        values={v: np.concatenate([b["values"][v] for b in batches]) for v in SPEC.value_names},
    )
    whole.add_requests(
        np.concatenate([r[0] for r in requests]), np.concatenate([r[1] for r in requests])
    )
    merged = RoleAggregate(SPEC)
    for b in batches:
        part = RoleAggregate(SPEC)
        part.add_labelled(**b)
        merged.merge(part)
    for latency, error in requests:
        part = RoleAggregate(SPEC)
        part.add_requests(latency, error)
        merged.merge(part)
    a, b = whole.to_dict(), merged.to_dict()
    for key in ("requests", "errors", "confusion", "scores", "segments", "spec"):
        assert a[key] == b[key]
    assert a["latency"]["counts"] == b["latency"]["counts"]
    assert merged.latency.mean_log() == pytest.approx(whole.latency.mean_log(), rel=1e-13)
    assert merged.values is not None
    assert whole.values is not None
    assert merged.values.cov("amount", "loss") == pytest.approx(
        whole.values.cov("amount", "loss"), rel=1e-9
    )
    # JSON round trip reproduces the state exactly.
    text = json.dumps(whole.to_dict(), allow_nan=False)
    back = RoleAggregate.from_dict(json.loads(text))
    assert back.to_dict() == whole.to_dict()
    assert back.scores.auc() == whole.scores.auc()
    # copy() is deep.
    clone = whole.copy()
    clone.add_labelled(**_batch(rng, 5))
    assert clone.labelled == whole.labelled + 5
    assert sum(c.n for c in clone.segments["region"].values()) == whole.labelled + 5
    assert sum(c.n for c in whole.segments["region"].values()) == whole.labelled


def test_role_aggregate_without_segments_or_values() -> None:
    agg = RoleAggregate()
    assert agg.spec == AggregateSpec()
    assert agg.values is None
    assert agg.segments == {}
    agg.add_labelled([1, 0, 1], [1, 0, 0])
    agg.add_requests([0.1, 0.2])
    assert (agg.labelled, agg.requests, agg.errors) == (3, 2, 0)
    assert agg.scores.n_pos == 0  # no scores given
    assert RoleAggregate.from_dict(_json_round_trip(agg.to_dict())).to_dict() == agg.to_dict()


def test_role_aggregate_many_segment_values_and_nan_keys() -> None:
    spec = AggregateSpec(segment_fields=("shop",))
    rng = np.random.default_rng(23)
    n = 5_000
    shops = rng.integers(0, 40, n)  # more values than the equality-scan path handles
    y, pred = _labels(rng, n, 0.3), _labels(rng, n, 0.3)
    agg = RoleAggregate(spec)
    agg.add_labelled(y, pred, segments={"shop": shops})
    assert len(agg.segments["shop"]) == np.unique(shops).size
    assert sum(c.n for c in agg.segments["shop"].values()) == n
    c7 = agg.segments["shop"]["7"]
    assert c7.tp == int(np.sum(y & pred & (shops == 7)))
    mixed = RoleAggregate(spec)
    mixed.add_labelled([1, 0, 1, 1], [1, 1, 0, 1], segments={"shop": [1.5, np.nan, np.nan, 1.5]})
    assert {k: v.n for k, v in mixed.segments["shop"].items()} == {"1.5": 2, "nan": 2}
    objects = RoleAggregate(spec)
    objects.add_labelled([1, 0, 1], [1, 1, 0], segments={"shop": np.array([1, "1", None], object)})
    assert {k: v.n for k, v in objects.segments["shop"].items()} == {"1": 2, "None": 1}


def test_role_aggregate_validation_names_the_field_and_is_atomic() -> None:
    rng = np.random.default_rng(24)
    agg = RoleAggregate(SPEC)
    good = _batch(rng, 100)
    before = agg.to_dict()
    cases = [
        (
            {"segments": {"region": good["segments"]["region"]}},
            "segments is missing field 'channel'",
        ),
        ({"segments": None}, "segments is missing field 'region'"),
        ({"values": {"amount": good["values"]["amount"]}}, "values is missing 'loss'"),
        ({"values": None}, "values is missing 'amount'"),
        (
            {"values": {"amount": good["values"]["amount"], "loss": np.full(100, np.nan)}},
            r"values\['loss'\] must be finite",
        ),
        (
            {"segments": {**good["segments"], "region": good["segments"]["region"][:5]}},
            r"segments\['region'\] must be one value per prediction",
        ),
        ({"score": good["score"][:10]}, "score has length 10, expected 100"),
        ({"y_pred": good["y_pred"][:10]}, "y_pred has length 10"),
        ({"y_true": np.full(100, 2)}, "y_true must contain only 0/1"),
        ({"score": np.full(100, np.nan)}, "score contains NaN"),
    ]
    for override, match in cases:
        with pytest.raises(ValueError, match=match):
            agg.add_labelled(**{**good, **override})
    with pytest.raises(ValueError, match="latency_s must be > 0"):
        agg.add_requests([0.1, -1.0], [0, 1])
    with pytest.raises(ValueError, match="error has length 1, expected 2"):
        agg.add_requests([0.1, 0.2], [1])
    with pytest.raises(ValueError, match="error must contain only 0/1"):
        agg.add_requests([0.1, 0.2], [1, 5])
    assert agg.to_dict() == before


def test_spec_validation_merge_mismatch_and_from_policy() -> None:
    policy = SimpleNamespace(segment_fields=("region",), value_names=("amount", "loss"))
    spec = AggregateSpec.from_policy(policy)
    assert spec == AggregateSpec(("region",), ("amount", "loss"))
    assert AggregateSpec(["region"], ["amount", "loss"]) == spec  # lists normalised
    with pytest.raises(ValueError, match="specs differ"):
        RoleAggregate(spec).merge(RoleAggregate(AggregateSpec(("region",))))
    with pytest.raises(ValueError, match="score_bins must be a positive integer"):
        AggregateSpec(score_bins=0)
    with pytest.raises(ValueError, match="latency_growth must be a finite number > 1"):
        AggregateSpec(latency_growth=0.5)
    with pytest.raises(ValueError, match="segment_fields must be a sequence"):
        AggregateSpec(segment_fields="region")
    with pytest.raises(ValueError, match="value_names contains duplicate"):
        AggregateSpec(value_names=("a", "a"))
    bad = RoleAggregate(spec).to_dict()
    bad["version"] = 99
    with pytest.raises(ValueError, match="unsupported format version"):
        RoleAggregate.from_dict(bad)


def test_state_size_does_not_grow_with_predictions() -> None:
    spec = AggregateSpec(segment_fields=("region",), value_names=("amount",))
    rng = np.random.default_rng(25)
    sizes = {}
    for n in (1_000, 100_000, 1_000_000):
        agg = RoleAggregate(spec)
        b = _batch(rng, n)
        agg.add_labelled(
            b["y_true"],
            b["y_pred"],
            b["score"],
            {"region": b["segments"]["region"]},
            {"amount": b["values"]["amount"]},
        )
        agg.add_requests(*_requests(rng, n))
        arrays = (agg.latency.counts, agg.latency.edges, agg.scores.pos, agg.scores.neg)
        sizes[n] = (
            agg.nbytes(),
            tuple(a.shape for a in arrays),
            len(json.dumps(agg.to_dict())),
        )
    assert sizes[1_000][:2] == sizes[100_000][:2] == sizes[1_000_000][:2]
    # Sparse JSON only stores occupied bins; their number is capped by the layout, so
    # beyond the point where the occupied bins saturate only count digits are added.
    full = RoleAggregate(spec)
    full.scores.pos[:] = full.scores.neg[:] = full.latency.counts[:] = 2**62
    cap = len(json.dumps(full.to_dict())) + 2_000
    assert sizes[1_000][2] <= sizes[100_000][2] <= sizes[1_000_000][2] < cap
    assert sizes[1_000_000][2] < 2 * sizes[100_000][2]  # 10x the data, far less than 2x

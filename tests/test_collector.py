"""The embedded collector: SQLite prediction log, label join and the gate's StageSamples.

The reference for every aggregate is a RoleAggregate fed row by row (``add_requests`` /
``add_labelled``) with the same rows; the collector must agree up to float rounding.
"""

from __future__ import annotations

import math
import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest

from mlflow_kpigate.core.records import Label, Prediction
from mlflow_kpigate.gate import StageSample
from mlflow_kpigate.kpis import AggregateSpec, RoleAggregate
from mlflow_kpigate.metrics import Collector, CollectorError
from mlflow_kpigate.rollout.ports import SampleSource

SPEC = AggregateSpec(segment_fields=("region", "channel"), value_names=("loss", "amount"))
T0 = 1_700_000_000.0


def assert_close(a, b, path="") -> None:
    """Nested equality with floats compared up to rounding."""
    if isinstance(a, dict):
        assert isinstance(b, dict), path
        assert set(a) == set(b), f"{path}: keys {sorted(a)} != {sorted(b)}"
        for key in a:
            assert_close(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert isinstance(b, list), path
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9), f"{path}: {a} != {b}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def make_rows(n: int, seed: int = 0, stages: int = 3) -> list[Prediction]:
    """Rows with every case: both roles, shadow copies, errors, score-less predictions,
    missing segment values."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        role = "candidate" if rng.random() < 0.4 else "baseline"
        error = bool(rng.random() < 0.05)
        kind = rng.random()
        score = None if error or kind < 0.1 else float(rng.random())
        if error:
            predicted = None
        elif score is None:
            predicted = int(rng.random() < 0.3)
        else:
            predicted = int(score >= 0.5)
        segments = {"region": str(rng.choice(["eu", "us", "apac"]))}
        if rng.random() < 0.8:
            segments["channel"] = str(rng.choice(["web", "app"]))
        rows.append(Prediction(
            request_id=f"r{seed}-{i}", ts=T0 + i, role=role,
            version="2" if role == "candidate" else "1", stage_index=int(i % stages),
            shadow=role == "candidate" and i % stages == 0,
            latency_s=float(rng.lognormal(-2.5, 0.4)),
            error=error, score=score, predicted=predicted, segments=segments,
        ))
    return rows


def make_labels(rows: list[Prediction], share: float, seed: int = 1) -> list[Label]:
    rng = np.random.default_rng(seed)
    return [
        Label(p.request_id, int(rng.random() < 0.3),
              {"loss": float(rng.gamma(2.0, 50.0)), "amount": float(rng.gamma(3.0, 40.0)) + 1e4})
        for p in rows if rng.random() < share
    ]


def reference(rows: list[Prediction], labels: list[Label], cutoff: float
              ) -> dict[tuple[int, str], RoleAggregate]:
    by_id = {lab.request_id: lab for lab in labels}
    out: dict[tuple[int, str], RoleAggregate] = {}
    for p in rows:
        agg = out.setdefault((p.stage_index, p.role), RoleAggregate(SPEC))
        agg.add_requests([p.latency_s], [int(p.error)])
        lab = by_id.get(p.request_id)
        if lab is None or p.predicted is None or p.ts > cutoff:
            continue
        segments = {f: [p.segments.get(f, "unknown")] for f in SPEC.segment_fields}
        agg.add_labelled([lab.label], [p.predicted],
                         score=None if p.score is None else [p.score],
                         segments=segments, values={k: [v] for k, v in lab.values.items()})
    return out


def by_key(samples: list[StageSample]) -> dict[tuple[int, str], RoleAggregate]:
    out = {}
    for s in samples:
        out[(s.stage_index, "baseline")] = s.baseline
        out[(s.stage_index, "candidate")] = s.candidate
    return out


@pytest.fixture
def collector(tmp_path: Path):
    c = Collector(tmp_path / "predictions.db", SPEC)
    yield c
    c.close()


@pytest.fixture
def plain(tmp_path: Path):
    """A collector without business values, so labels need no values."""
    c = Collector(tmp_path / "plain.db", AggregateSpec())
    yield c
    c.close()


def test_stage_samples_equal_row_by_row_aggregates(collector: Collector):
    rows = make_rows(3000)
    labels = make_labels(rows, 0.7)
    collector.log(rows)
    result = collector.add_labels(labels)
    assert (result.matched, result.unknown, result.duplicates) == (len(labels), (), 0)
    now, maturity = T0 + 4000, 2000.0  # rows served after T0 + 2000 are not mature yet
    samples = collector.stage_samples(now, maturity)
    assert [s.stage_index for s in samples] == [0, 1, 2]
    got, want = by_key(samples), reference(rows, labels, now - maturity)
    assert set(got) == set(want)
    for key in want:
        assert_close(got[key].to_dict(), want[key].to_dict(), str(key))
    # Quantiles depend on min/max in the edge buckets: equal too.
    for key in want:
        for q in (0.5, 0.95, 0.99, 1.0):
            assert got[key].latency.quantile(q) == pytest.approx(want[key].latency.quantile(q))
    assert isinstance(collector, SampleSource)


def test_maturity_cutoff_counts_requests_but_not_young_labels(plain: Collector):
    rows = [Prediction(f"m{i}", T0 + i, "baseline", "1", 0, False, 0.05, False, 0.9, 1)
            for i in range(10)]
    plain.log(rows)
    plain.add_labels([Label(f"m{i}", 1) for i in range(10)])
    # Not counted while immature; the boundary row (ts == now - maturity) counts.
    (sample,) = plain.stage_samples(now=T0 + 104, maturity_s=100)
    assert sample.baseline.requests == 10
    assert sample.baseline.labelled == 5  # ts T0+0 … T0+4
    (sample,) = plain.stage_samples(now=T0 + 1000, maturity_s=100)
    assert sample.baseline.labelled == 10
    (sample,) = plain.stage_samples(now=T0 + 1000, maturity_s=100, since=T0 + 7)
    assert (sample.baseline.requests, sample.baseline.labelled) == (3, 3)


def test_shadow_copies_count_for_the_candidate_and_share_the_label(plain: Collector):
    served = Prediction("s1", T0, "baseline", "1", 0, False, 0.05, False, 0.9, 1)
    plain.log([served])
    # The label arrives before the candidate's shadow copy finished scoring.
    result = plain.add_labels([Label("s1", 0)])
    assert result.matched == 1
    assert [(o.role, o.outcome) for o in result.outcomes] == [("baseline", "fp")]
    copy = Prediction("s1", T0, "candidate", "2", 0, True, 0.07, False, 0.2, 0)
    failed = Prediction("s2", T0, "candidate", "2", 0, True, 0.5, True, None, None)
    plain.log([copy, failed])
    (sample,) = plain.stage_samples(now=T0 + 10, maturity_s=0)
    assert (sample.candidate.requests, sample.candidate.errors) == (2, 1)
    assert sample.candidate.confusion.to_dict() == {"tp": 0, "fp": 0, "tn": 1, "fn": 0}
    assert sample.baseline.confusion.to_dict() == {"tp": 0, "fp": 1, "tn": 0, "fn": 0}
    assert plain.stats()["labelled"] == 2


def test_unknown_and_duplicate_labels_first_label_wins(tmp_path: Path, plain: Collector):
    plain.log([Prediction("a", T0, "baseline", "1", 0, False, 0.05, False, 0.9, 1),
                   Prediction("b", T0, "baseline", "1", 0, False, 0.05, False, 0.1, 0)])
    first = plain.add_labels([Label("a", 1), Label("nope", 0), Label("a", 0)])
    assert (first.matched, first.unknown, first.duplicates) == (1, ("nope",), 1)
    again = plain.add_labels([Label("a", 0), Label("b", 1), Label("gone", 1)])
    assert (again.matched, again.unknown, again.duplicates) == (1, ("gone",), 1)
    (sample,) = plain.stage_samples(now=T0 + 10, maturity_s=0)
    # "a" keeps its first label (1 → tp), "b" is a false negative.
    assert sample.baseline.confusion.to_dict() == {"tp": 1, "fp": 0, "tn": 0, "fn": 1}
    stats = plain.stats()
    assert stats == {"predictions": 2, "labelled": 2, "unknown_labels": 2, "pending": 0}
    # The unknown count is kept in the file, so another process sees it.
    other = Collector(tmp_path / "plain.db", AggregateSpec())
    try:
        assert other.stats()["unknown_labels"] == 2
    finally:
        other.close()


def test_label_for_a_just_logged_request_is_never_unknown(tmp_path: Path):
    # A long flush interval: without add_labels flushing first the row would be queued.
    c = Collector(tmp_path / "p.db", AggregateSpec(), flush_interval_s=30, batch_size=10_000)
    try:
        c.log([Prediction("fresh", T0, "baseline", "1", 0, False, 0.01, False, 0.7, 1)])
        assert c.add_labels([Label("fresh", 1)]).matched == 1
    finally:
        c.close()


def test_close_writes_everything_queued(tmp_path: Path):
    c = Collector(tmp_path / "p.db", SPEC, flush_interval_s=30, batch_size=10_000)
    c.log(make_rows(1234))
    assert c.stats()["pending"] in range(1235)
    c.close()
    c.close()  # idempotent
    with pytest.raises(CollectorError, match="closed"):
        c.log(make_rows(1))
    reopened = Collector(tmp_path / "p.db", SPEC)
    try:
        assert reopened.stats()["predictions"] == 1234
    finally:
        reopened.close()


def test_purge_deletes_only_rows_past_retention(tmp_path: Path):
    c = Collector(tmp_path / "p.db", AggregateSpec(), retention_s=100)
    try:
        c.log([Prediction(f"p{i}", T0 + i * 10, "baseline", "1", 0, False, 0.01, False, None, 1)
               for i in range(30)])
        c.flush()
        assert c.purge(now=T0 + 50) == 0  # nothing is older than 100 s yet
        assert c.purge(now=T0 + 200) == 10  # ts T0 … T0+90
        assert c.stats()["predictions"] == 20
        assert c.add_labels([Label("p0", 1)]).unknown == ("p0",)
        assert c.add_labels([Label("p10", 1)]).matched == 1
    finally:
        c.close()


def test_features_are_stored_only_when_asked(tmp_path: Path):
    row = Prediction("f", T0, "baseline", "1", 0, False, 0.01, False, 0.5, 1,
                     features={"amount": 12.5, "card": "4111"})
    for store, expected in ((False, None), (True, '{"amount": 12.5, "card": "4111"}')):
        path = tmp_path / f"{store}.db"
        with Collector(path, AggregateSpec(), store_features=store) as c:
            c.log([row])
        with sqlite3.connect(path) as db:
            assert db.execute("SELECT features FROM predictions").fetchone() == (expected,)


def test_concurrent_writer_and_reader_on_the_same_file(tmp_path: Path):
    path = tmp_path / "p.db"
    writer = Collector(path, SPEC, flush_interval_s=0.01, batch_size=200)
    reader = Collector(path, SPEC)  # as the controller: another instance on the file
    rows = make_rows(20_000, seed=5, stages=2)
    seen: list[int] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def write() -> None:
        try:
            for start in range(0, len(rows), 500):
                writer.log(rows[start:start + 500])
            writer.flush()
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    def read() -> None:
        try:
            while not done.is_set():
                samples = reader.stage_samples(T0 + 1e6, 0)
                seen.append(sum(s.baseline.requests + s.candidate.requests for s in samples))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write), threading.Thread(target=read)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        assert seen == sorted(seen)  # every read saw a consistent, growing snapshot
        samples = reader.stage_samples(T0 + 1e6, 0)
        assert sum(s.baseline.requests + s.candidate.requests for s in samples) == len(rows)
    finally:
        writer.close()
        reader.close()


def test_hundred_thousand_rows(tmp_path: Path):
    spec = AggregateSpec(segment_fields=("region",))
    rng = np.random.default_rng(9)
    n = 100_000
    latency = rng.lognormal(-2.5, 0.3, n)
    score = rng.random(n)
    y = (rng.random(n) < 0.2).astype(int)
    rows = [Prediction(f"h{i}", T0 + i * 0.01, "candidate" if i % 4 == 0 else "baseline",
                       "v", 0, False, float(latency[i]), False, float(score[i]),
                       int(score[i] >= 0.5), {"region": "eu" if i % 2 else "us"})
            for i in range(n)]
    with Collector(tmp_path / "p.db", spec) as c:
        c.log(rows)
        result = c.add_labels([Label(f"h{i}", int(y[i])) for i in range(n)])
        assert result.matched == n
        (sample,) = c.stage_samples(T0 + 10_000, 0)
        assert sample.baseline.requests + sample.candidate.requests == n
        assert sample.candidate.requests == n // 4
        assert sample.baseline.labelled + sample.candidate.labelled == n
        expected = RoleAggregate(spec)
        mask = np.arange(n) % 4 == 0
        expected.add_requests(latency[mask])
        expected.add_labelled(y[mask], (score[mask] >= 0.5).astype(int), score[mask],
                              segments={"region": np.where(np.arange(n)[mask] % 2, "eu", "us")})
        assert_close(sample.candidate.to_dict(), expected.to_dict())


def test_new_segment_field_on_an_existing_file(tmp_path: Path):
    path = tmp_path / "p.db"
    with Collector(path, AggregateSpec()) as c:
        c.log([Prediction("x", T0, "baseline", "1", 0, False, 0.01, False, 0.9, 1,
                          {"region": "eu"})])
        c.add_labels([Label("x", 1)])
    with Collector(path, AggregateSpec(segment_fields=("region",))) as c:
        c.log([Prediction("y", T0, "baseline", "1", 0, False, 0.01, False, 0.9, 1,
                          {"region": "eu"})])
        c.add_labels([Label("y", 1)])
        (sample,) = c.stage_samples(T0 + 1, 0)
        assert {k: v.n for k, v in sample.baseline.segments["region"].items()} == {
            "unknown": 1, "eu": 1}


def test_bad_input(tmp_path: Path, collector: Collector):
    good = dict(request_id="r", ts=T0, role="baseline", version="1", stage_index=0,
                shadow=False, latency_s=0.01, error=False, score=0.5, predicted=1)
    for field, value, match in [
        ("request_id", "", "request_id"), ("role", "champion", "role"),
        ("latency_s", 0.0, "latency_s"), ("latency_s", math.nan, "latency_s"),
        ("predicted", 2, "predicted"), ("score", math.nan, "score"),
        ("stage_index", -1, "stage_index"), ("ts", "now", "ts"),
    ]:
        with pytest.raises(ValueError, match=match):
            Prediction(**{**good, field: value})
    with pytest.raises(ValueError, match=r"predictions\[1\]"):
        collector.log([Prediction(**good), {"request_id": "r"}])
    collector.log([Prediction(**good)])
    values = {"loss": 1.0, "amount": 2.0}
    with pytest.raises(ValueError, match=r"labels\[1\]\.label must be 0 or 1, got 2"):
        collector.add_labels([Label("r", 1, values), Label("r", 2, values)])
    with pytest.raises(ValueError, match=r"^label must be 0 or 1, got '1'$"):
        collector.add_labels([Label("r", "1", values)])
    # A single label is named as such, with the fix spelt out (not "labels[0]").
    with pytest.raises(ValueError, match=r"^values is missing") as missing:
        collector.add_labels([Label("r", 1, {"loss": 1.0})])
    assert str(missing.value) == (
        "values is missing 'amount': the policy's business KPIs need 'loss', 'amount' with "
        'every label, e.g. {"request_id": "r", "label": 1, "values": {"loss": 12.5, '
        '"amount": 12.5}}')
    with pytest.raises(ValueError, match=r"labels\[1\]\.values is missing 'amount'"):
        collector.add_labels([Label("r", 1, values), Label("r", 1, {"loss": 1.0})])
    with pytest.raises(ValueError, match=r"^values\['loss'\] must be a finite number"):
        collector.add_labels([Label("r", 1, {"loss": math.inf, "amount": 1.0})])
    # Nothing was recorded by the rejected batches.
    assert collector.stats()["labelled"] == 0
    with pytest.raises(ValueError, match="score_bins"):
        Collector(tmp_path / "predictions.db", AggregateSpec(score_bins=10))
    with pytest.raises(ValueError, match="maturity_s"):
        collector.stage_samples(T0, -1)
    with pytest.raises(ValueError, match="batch_size"):
        Collector(tmp_path / "other.db", SPEC, batch_size=0)


def test_a_failing_writer_surfaces_and_keeps_the_rows(tmp_path: Path):
    path = tmp_path / "p.db"
    c = Collector(path, AggregateSpec())
    c.log([Prediction("ok", T0, "baseline", "1", 0, False, 0.01, False, 0.5, 1)])
    c.flush()
    with sqlite3.connect(path) as db:  # sabotage: the writer's next INSERT fails
        db.execute("DROP TABLE predictions")
    c.log([Prediction(f"lost{i}", T0, "baseline", "1", 0, False, 0.01, False, 0.5, 1)
           for i in range(3)])
    with pytest.raises(CollectorError, match=r"no such table.*3 predictions are queued"):
        c.flush()
    with pytest.raises(CollectorError, match="writer failed"):
        c.log([Prediction("more", T0, "baseline", "1", 0, False, 0.01, False, 0.5, 1)])
    with pytest.raises(CollectorError, match="3 predictions were not written"):
        c.close()


# --- the paired part of shadow strata -----------------------------------------------------


def _shadow_row(rng, rid: str, ts: float, stage: int, shared: float, role: str,
                shadow: bool, lag: float = 0.0, *, error: bool = False) -> Prediction:
    """One role's row of a request whose difficulty ``shared`` both roles see."""
    z = 0.8 * shared + 0.6 * rng.normal()
    score = None if error or rng.random() < 0.05 else float(1 / (1 + math.exp(-z)))
    predicted = None if error else (int(rng.random() < 0.4) if score is None
                                    else int(score >= 0.5))
    latency = float(math.exp(-2.5 + 0.3 * shared + 0.2 * rng.normal()))
    return Prediction(rid, ts + lag, role, "2" if role == "candidate" else "1", stage, shadow,
                      None if rng.random() < 0.05 else latency, error, score, predicted)


def shadow_log(n: int, seed: int = 3) -> list[Prediction]:
    """A shadow stage (0: baseline answers, candidate copies), a split stage (1) and a bake
    (2: candidate answers, baseline copies), with skipped and late copies, failures, a
    fallback answer, unknown latencies and score-less rows."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        stage = int(rng.choice([0, 1, 2], p=[0.5, 0.2, 0.3]))
        key = (rng, f"p{i}", T0 + i + rng.random(), stage, rng.normal())
        fallback = [_shadow_row(*key, "candidate", False, error=True),
                    _shadow_row(*key, "baseline", False, 0.01)]
        if stage == 1:  # split: one role, or a candidate failure with the baseline's answer
            rows += fallback if rng.random() < 0.05 else [
                _shadow_row(*key, "candidate" if rng.random() < 0.5 else "baseline", False)]
            continue
        if stage == 2 and rng.random() < 0.03:  # the candidate failed: the baseline answers
            rows += fallback
            continue
        served, copier = ("baseline", "candidate") if stage == 0 else ("candidate", "baseline")
        rows.append(_shadow_row(*key, served, False))
        if rng.random() < 0.95:  # some copies are skipped (too many in flight)
            rows.append(_shadow_row(*key, copier, True, float(rng.exponential(2.0)),
                                    error=bool(rng.random() < 0.03)))
    return rows


def brute_force_pairs(rows: list[Prediction], labels: dict[str, int], cutoff: float,
                      since: float | None):
    """The paired part by joining the rows in Python."""
    from mlflow_kpigate.kpis import PairedAggregate

    shadow = {p.stage_index for p in rows if p.shadow and (since is None or p.ts >= since)}
    by_key: dict[tuple[str, int], dict[str, Prediction]] = {}
    for p in rows:
        by_key.setdefault((p.request_id, p.stage_index), {})[p.role] = p
    out = {s: PairedAggregate(SPEC.score_bins) for s in shadow}
    for (rid, stage), pair in by_key.items():
        b, c = pair.get("baseline"), pair.get("candidate")
        if stage not in shadow or b is None or c is None:
            continue
        if since is not None and (b.ts < since or c.ts < since):
            continue
        agg = out[stage]
        if b.latency_s is not None and c.latency_s is not None:
            agg.add_requests([b.error], [c.error], [b.latency_s], [c.latency_s])
        else:
            agg.add_requests([b.error], [c.error])
        if (rid in labels and b.predicted is not None and c.predicted is not None
                and b.ts <= cutoff and c.ts <= cutoff):
            scores = ((None, None) if b.score is None or c.score is None
                      else ([b.score], [c.score]))
            agg.add_labelled([labels[rid]], [b.predicted], [c.predicted], *scores)
    return out


@pytest.mark.parametrize("since", [None, T0 + 500])
def test_paired_part_equals_a_brute_force_join(plain: Collector, since):
    rows = shadow_log(4000)
    rng = np.random.default_rng(4)
    labelled_ids = sorted({p.request_id for p in rows if rng.random() < 0.8})
    # Half the shadow copies are logged after their label arrived: they must join it.
    late = [p for i, p in enumerate(rows) if p.shadow and i % 2]
    plain.log([p for i, p in enumerate(rows) if not (p.shadow and i % 2)])
    labels = {rid: int(rng.random() < 0.3) for rid in labelled_ids}
    assert plain.add_labels([Label(rid, y) for rid, y in labels.items()]).unknown == ()
    plain.log(late)
    now, maturity = T0 + 5000, 2000.0
    samples = plain.stage_samples(now, maturity, since=since)
    want = brute_force_pairs(rows, labels, now - maturity, since)
    got = {s.stage_index: s.paired for s in samples if s.paired is not None}
    assert sorted(got) == sorted(want) == [0, 2]  # never the split stage
    for stage, paired in want.items():
        assert paired.requests > 100
        assert paired.labelled > 100
        assert_close(got[stage].to_dict(), paired.to_dict(), f"stage {stage}")
    # The role aggregates are unchanged by pairing, and a split stage has no paired part.
    assert next(s for s in samples if s.stage_index == 1).paired is None

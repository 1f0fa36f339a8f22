"""Per-KPI-kind estimators: turn role aggregates into tested statistics with variances.

Each KPI kind yields a :class:`Measurement`: human-facing values for both roles, and one
or more tested statistics (``Test``), each an estimate with its variance, oriented so that
**positive means the candidate is better**. Comparisons are made within each stage
(stratum), where baseline and candidate are served concurrently, and pooled across stages
with inverse-variance weights, so that a change of traffic share or time of day between
stages cannot masquerade as a KPI difference, and the pooled score keeps independent
increments (the condition under which the confidence sequences are valid).

Variance estimates (documented in docs/statistics.md):

* proportions: Agresti–Caffo (+1 success, +2 trials per arm) plug-in binomial variance;
  the unit is the metric's denominator (labelled positives for recall, predicted
  positives for precision, requests for error rate);
* F1: ratio estimator 2TP / (2TP + FP + FN), delta-method variance;
* latency mean: difference of mean log-latency (a ratio of geometric means), Welch variance;
* quantile q: exceedance. The baseline's q-quantile t (pooled) sets a threshold; the test
  is ``P_b(X > t) − P_c(X > t·(1+m))`` (two independent binomials). Under the null that the
  candidate's latency is the baseline's scaled by (1+m) the two are equal for any t, so the
  margin lives in the threshold and the test is against 0. Thresholds are snapped to the
  histogram's bucket edges in the conservative direction for each bound;
* AUC: DeLong variance per arm on the binned scores, arms independent;
* fairness: index = min/max of a rate across segments. For every ordered pair of segments
  (A, B) the statistic ``ln(r_c,A / r_c,B) − ln FI_b`` compares the candidate's pair ratio
  with the baseline's index; log-rate variances by the delta method (≈ 1/x − 1/n with +½
  continuity); the pairs are a family (Bonferroni within the KPI's share of α);
* business: ratio of logged values Σnum/Σden per arm, delta-method variance from the
  co-moments (``den = count`` gives a plain mean).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import permutations

from mlflow_kpigate.core.samples import StageSample
from mlflow_kpigate.kpis import LatencyHistogram, RoleAggregate
from mlflow_kpigate.policy import COUNT, LATENCY, Direction, KpiKind, KpiSpec, Margin

NAN = math.nan

#: Fewest units per role in a stage before a mean-type or AUC comparison uses that stage:
#: with a handful of values the plug-in variance is too unstable for the asymptotic
#: confidence sequence (a Gaussian simulation crossed 15% of the time with 2 values in the
#: first look, under 4% with 10 or more). Proportions use Agresti–Caffo instead.
MIN_UNITS = 30


@dataclass(frozen=True)
class Test:
    """One tested statistic, pooled over strata: estimate and variance (better-positive)."""

    label: str
    delta: float
    variance: float

    @property
    def usable(self) -> bool:
        """Finite estimate with a finite positive variance."""
        return math.isfinite(self.delta) and math.isfinite(self.variance) and self.variance > 0


@dataclass(frozen=True)
class Measurement:
    """What one KPI's data say, ready for the confidence sequences."""

    statistic: str
    baseline_value: float
    candidate_value: float
    samples: int
    rollback_tests: tuple[Test, ...]
    promote_tests: tuple[Test, ...]
    rollback_threshold: float
    promote_threshold: float
    scale: float  # the margin on the tested scale: sets the mixture's τ
    missing: str | None = None  # why there is no usable estimate yet
    # False when the margin is built into the tested statistic (quantiles), so that a
    # positive bound shows non-inferiority rather than superiority.
    better_means_superior: bool = True


class Strata:
    """The strata of one evaluation, with each role's data merged across them (cached)."""

    def __init__(self, samples: Sequence[StageSample]) -> None:
        self.samples = tuple(samples)
        self._merged: dict[str, RoleAggregate] = {}

    def __iter__(self):  # noqa: ANN204 - a plain iterator over the strata
        return iter(self.samples)

    def __len__(self) -> int:
        return len(self.samples)

    def merged(self, role: str) -> RoleAggregate:
        """All of ``role``'s data (``baseline`` or ``candidate``) across strata."""
        if role not in self._merged:
            agg: RoleAggregate | None = None
            for sample in self.samples:
                part = getattr(sample, role)
                if agg is None:
                    agg = part.copy()
                else:
                    agg.merge(part)
            if agg is None:
                raise ValueError("no samples")
            self._merged[role] = agg
        return self._merged[role]


def _pool(parts: Sequence[tuple[float, float]], label: str = "") -> Test:
    """Inverse-variance pooling of per-stratum (estimate, variance) pairs."""
    num = 0.0
    info = 0.0
    for delta, var in parts:
        if math.isfinite(delta) and math.isfinite(var) and var > 0:
            num += delta / var
            info += 1.0 / var
    if info == 0:
        return Test(label, NAN, NAN)
    return Test(label, num / info, 1.0 / info)


def _sign(kpi: KpiSpec) -> float:
    return 1.0 if kpi.direction is Direction.HIGHER else -1.0


def _ac(x: float, n: float) -> tuple[float, float]:
    """Agresti–Caffo adjusted proportion and its variance."""
    p = (x + 1.0) / (n + 2.0)
    return p, p * (1.0 - p) / (n + 2.0)


def _ratio(x: float, n: float) -> float:
    return x / n if n > 0 else NAN


def _resolve_margin(margin: Margin | None, reference: float) -> float:
    """A margin in KPI units (relative margins scale the baseline's value)."""
    if margin is None:
        return NAN
    if margin.relative:
        return margin.value * abs(reference) if math.isfinite(reference) else NAN
    return margin.value


# --- counts ---------------------------------------------------------------------------

def _counts(kpi: KpiSpec, agg: RoleAggregate) -> tuple[float, float]:
    """(successes, trials) of a proportion KPI for one role."""
    if kpi.metric == "error_rate":
        return float(agg.errors), float(agg.requests)
    if kpi.metric == "custom":
        if agg.values is None or agg.values.n == 0:
            return 0.0, 0.0
        return agg.values.total(kpi.numerator or ""), agg.values.total(kpi.denominator or "")
    x, n = agg.confusion.rate(kpi.metric or "")
    return float(x), float(n)


def _f1(agg: RoleAggregate) -> tuple[float, float, int]:
    """F1, its delta-method variance, and the number of units (TP+FP+FN)."""
    c = agg.confusion
    den = 2 * c.tp + c.fp + c.fn
    if den == 0:
        return NAN, NAN, 0
    r = 2 * c.tp / den
    # Per labelled prediction: a = 2·tp, d = 2·tp + fp + fn; Var(R) ≈ Σ(a − R d)² / (Σd)².
    ss = c.tp * (2 - 2 * r) ** 2 + (c.fp + c.fn) * r * r
    var = ss / (den * den)
    # Continuity floor so that an all-correct arm still has a usable variance.
    var = max(var, 0.25 / (den * den))
    return r, var, c.tp + c.fp + c.fn


def _measure_proportion(kpi: KpiSpec, samples: Strata,
                        m_rollback: float, m_promote: float) -> Measurement:
    sign = _sign(kpi)
    b_all, c_all = samples.merged("baseline"), samples.merged("candidate")
    if kpi.metric == "f1":
        bv, _, _ = _f1(b_all)
        cv, _, cn = _f1(c_all)
        parts = []
        for s in samples:
            rb, vb, _ = _f1(s.baseline)
            rc, vc, _ = _f1(s.candidate)
            parts.append((sign * (rc - rb), vb + vc))
        samples_c = cn
        statistic = "F1 difference (candidate − baseline)"
    else:
        xb, nb = _counts(kpi, b_all)
        xc, nc = _counts(kpi, c_all)
        if kpi.metric == "custom" and (xb > nb or xc > nc):
            return _missing(kpi, "custom proportion: numerator exceeds denominator; it must "
                                 "count a subset of the denominator's events")
        bv, cv = _ratio(xb, nb), _ratio(xc, nc)
        parts = []
        for s in samples:
            sxb, snb = _counts(kpi, s.baseline)
            sxc, snc = _counts(kpi, s.candidate)
            if snb == 0 or snc == 0:
                continue
            pb, vb = _ac(sxb, snb)
            pc, vc = _ac(sxc, snc)
            parts.append((sign * (pc - pb), vb + vc))
        samples_c = int(nc)
        statistic = f"{kpi.metric} difference (candidate − baseline)"
    test = _pool(parts)
    margin = _resolve_margin(kpi.margin, bv)
    return _finish(kpi, statistic, bv, cv, samples_c, test, margin, m_rollback, m_promote)


def _measure_mean(kpi: KpiSpec, samples: Strata,
                  m_rollback: float, m_promote: float) -> Measurement:
    sign = _sign(kpi)
    b_all, c_all = samples.merged("baseline"), samples.merged("candidate")
    parts = []
    if kpi.source == LATENCY:
        for s in samples:
            hb, hc = s.baseline.latency, s.candidate.latency
            if hb.n < MIN_UNITS or hc.n < MIN_UNITS:
                continue
            parts.append((sign * (hc.mean_log() - hb.mean_log()),
                          hb.var_log() / hb.n + hc.var_log() / hc.n))
        bv = math.exp(b_all.latency.mean_log()) if b_all.latency.n else NAN
        cv = math.exp(c_all.latency.mean_log()) if c_all.latency.n else NAN
        margin = math.log1p(kpi.margin.value) if kpi.margin else NAN
        statistic = "log ratio of geometric-mean latency (candidate / baseline)"
        samples_c = c_all.latency.n
    else:
        name = kpi.source or ""
        for s in samples:
            vb_, vc_ = s.baseline.values, s.candidate.values
            if vb_ is None or vc_ is None or vb_.n < MIN_UNITS or vc_.n < MIN_UNITS:
                continue
            parts.append((sign * (vc_.mean(name) - vb_.mean(name)),
                          vb_.cov(name, name) / vb_.n + vc_.cov(name, name) / vc_.n))
        bv = b_all.values.mean(name) if b_all.values and b_all.values.n else NAN
        cv = c_all.values.mean(name) if c_all.values and c_all.values.n else NAN
        margin = _resolve_margin(kpi.margin, bv)
        statistic = f"mean {name} difference (candidate − baseline)"
        samples_c = c_all.values.n if c_all.values else 0
    return _finish(kpi, statistic, bv, cv, samples_c, _pool(parts), margin, m_rollback,
                   m_promote)


def _business_ratio(kpi: KpiSpec, agg: RoleAggregate) -> tuple[float, float, int]:
    v = agg.values
    if v is None or v.n < MIN_UNITS:
        return NAN, NAN, 0 if v is None else v.n
    num = kpi.numerator or ""
    if kpi.denominator == COUNT:
        return v.mean(num), v.cov(num, num) / v.n, v.n
    den = kpi.denominator or ""
    md = v.mean(den)
    if md == 0:
        return NAN, NAN, v.n
    r = v.mean(num) / md
    var = (v.cov(num, num) - 2 * r * v.cov(num, den) + r * r * v.cov(den, den)) / (v.n * md * md)
    return r, max(var, 0.0), v.n


def _measure_business(kpi: KpiSpec, samples: Strata,
                      m_rollback: float, m_promote: float) -> Measurement:
    sign = _sign(kpi)
    bv, _, _ = _business_ratio(kpi, samples.merged("baseline"))
    cv, _, cn = _business_ratio(kpi, samples.merged("candidate"))
    parts = []
    for s in samples:
        rb, vb, _ = _business_ratio(kpi, s.baseline)
        rc, vc, _ = _business_ratio(kpi, s.candidate)
        parts.append((sign * (rc - rb), vb + vc))
    margin = _resolve_margin(kpi.margin, bv)
    per = "per prediction" if kpi.denominator == COUNT else f"per {kpi.denominator}"
    statistic = f"{kpi.numerator} {per} difference (candidate − baseline)"
    return _finish(kpi, statistic, bv, cv, cn, _pool(parts), margin, m_rollback, m_promote)


def _measure_auc(kpi: KpiSpec, samples: Strata,
                 m_rollback: float, m_promote: float) -> Measurement:
    sign = _sign(kpi)
    b_all, c_all = samples.merged("baseline"), samples.merged("candidate")
    parts = []
    for s in samples:
        sb, sc = s.baseline.scores, s.candidate.scores
        if min(sb.n_pos, sb.n_neg, sc.n_pos, sc.n_neg) < MIN_UNITS // 3:
            continue
        parts.append((sign * (sc.auc() - sb.auc()), sb.auc_variance() + sc.auc_variance()))
    bv, cv = b_all.scores.auc(), c_all.scores.auc()
    margin = _resolve_margin(kpi.margin, bv)
    return _finish(kpi, "AUC difference (candidate − baseline)", bv, cv,
                   c_all.scores.n_pos + c_all.scores.n_neg, _pool(parts), margin,
                   m_rollback, m_promote)


def _exceed(h: LatencyHistogram, threshold: float, snap: str) -> tuple[float, float]:
    count, _ = h.count_above(threshold, snap)
    return _ac(count, h.n)


def _measure_quantile(kpi: KpiSpec, samples: Strata,
                      m_rollback: float, m_promote: float) -> Measurement:
    q = kpi.q or 0.95
    b_all, c_all = samples.merged("baseline"), samples.merged("candidate")
    if b_all.latency.n == 0:
        return _missing(kpi, "no baseline latency yet")
    t = b_all.latency.quantile(q)
    bv = t
    cv = c_all.latency.quantile(q) if c_all.latency.n else NAN
    margin = kpi.margin or Margin(0.0, relative=True)

    def scaled(mult: float) -> float:
        return t * (1 + mult * margin.value) if margin.relative else t + mult * margin.value

    t_roll, t_prom = scaled(m_rollback), scaled(m_promote)
    roll_parts, prom_parts = [], []
    for s in samples:
        hb, hc = s.baseline.latency, s.candidate.latency
        if hb.n == 0 or hc.n == 0:
            continue
        # Conservative snapping: for the rollback bound count more baseline and fewer
        # candidate exceedances; for the promotion bound the reverse.
        eb, vb = _exceed(hb, t, "down")
        ec, vc = _exceed(hc, t_roll, "up")
        roll_parts.append((eb - ec, vb + vc))
        eb, vb = _exceed(hb, t, "up")
        ec, vc = _exceed(hc, t_prom, "down")
        prom_parts.append((eb - ec, vb + vc))
    # The margin in exceedance points: how much the baseline's own exceedance drops when the
    # threshold moves by one margin (sets the mixture's scale).
    if b_all.latency.n:
        e_t = b_all.latency.count_above(t, "down")[0] / b_all.latency.n
        e_m = b_all.latency.count_above(scaled(1.0), "up")[0] / b_all.latency.n
        scale = e_t - e_m
    else:
        scale = NAN
    if not (math.isfinite(scale) and scale > 0):
        scale = (1 - q) / 2
    shown = f"+{margin}" if margin.value else ""
    statistic = (f"exceedance: P_baseline(latency > p{q * 100:g}) − "
                 f"P_candidate(latency > p{q * 100:g}{shown})")
    roll = _pool(roll_parts)
    prom = _pool(prom_parts)
    missing = None if roll.usable and prom.usable else "not enough latency samples"
    return Measurement(statistic, bv, cv, c_all.latency.n, (roll,), (prom,), 0.0, 0.0,
                       scale, missing, better_means_superior=not margin.value)


def _log_rate(x: float, n: float) -> tuple[float, float]:
    """Log of a rate with a ½ continuity correction, and its delta-method variance."""
    xs, ns = x + 0.5, n + 1.0
    return math.log(xs / ns), max(1.0 / xs - 1.0 / ns, 1e-12)


def segment_rates(kpi: KpiSpec, agg: RoleAggregate) -> dict[str, tuple[float, float]]:
    """(successes, trials) of the fairness KPI's rate in every segment with trials."""
    field = kpi.segment_by or ""
    out: dict[str, tuple[float, float]] = {}
    for value, conf in agg.segments.get(field, {}).items():
        x, n = conf.rate(kpi.metric or "")
        if n > 0:
            out[value] = (float(x), float(n))
    return out


def fairness_index(rates: dict[str, tuple[float, float]]) -> float:
    """min/max of the per-segment rates (1 = equal); NaN with fewer than two segments."""
    values = [x / n for x, n in rates.values() if n > 0]
    if len(values) < 2 or max(values) == 0:
        return NAN
    return min(values) / max(values)


def _measure_fairness(kpi: KpiSpec, samples: Strata,
                      m_rollback: float, m_promote: float) -> Measurement:
    b_rates = segment_rates(kpi, samples.merged("baseline"))
    c_rates = segment_rates(kpi, samples.merged("candidate"))
    common = sorted(set(b_rates) & set(c_rates))
    bv, cv = fairness_index(b_rates), fairness_index(c_rates)
    if len(common) < 2:
        return _missing(kpi, f"needs two or more '{kpi.segment_by}' segments seen by both "
                             "roles")
    b_logs = {s: _log_rate(*b_rates[s]) for s in common}
    lo_seg = min(common, key=lambda s: b_logs[s][0])
    hi_seg = max(common, key=lambda s: b_logs[s][0])
    ln_fi_b = b_logs[lo_seg][0] - b_logs[hi_seg][0]
    var_fi_b = b_logs[lo_seg][1] + b_logs[hi_seg][1]
    c_logs = {s: _log_rate(*c_rates[s]) for s in common}
    tests = []
    for a, b in permutations(common, 2):
        delta = c_logs[a][0] - c_logs[b][0] - ln_fi_b
        var = c_logs[a][1] + c_logs[b][1] + var_fi_b
        tests.append(Test(f"{kpi.segment_by}={a} vs {b}", delta, var))
    # The index may drop by at most m of the baseline's (higher is better): FI_c ≥ (1−m)·FI_b.
    margin = -math.log1p(-kpi.margin.value) if kpi.margin else NAN
    samples_c = int(sum(n for _, n in c_rates.values()))
    return Measurement(
        statistic=(f"ln({kpi.metric} ratio between two {kpi.segment_by} segments, candidate)"
                   " − ln(baseline fairness index)"),
        baseline_value=bv,
        candidate_value=cv,
        samples=samples_c,
        rollback_tests=tuple(tests),
        promote_tests=tuple(tests),
        rollback_threshold=-m_rollback * margin if math.isfinite(margin) else 0.0,
        promote_threshold=-m_promote * margin if math.isfinite(margin) else NAN,
        scale=margin if math.isfinite(margin) else math.log(1.25),
    )


def _missing(kpi: KpiSpec, why: str) -> Measurement:
    return Measurement("", NAN, NAN, 0, (), (), NAN, NAN, NAN, why)


def _finish(kpi: KpiSpec, statistic: str, bv: float, cv: float, samples: int, test: Test,
            margin: float, m_rollback: float, m_promote: float) -> Measurement:
    missing = None if test.usable else "not enough samples in both roles yet"
    if math.isfinite(margin) and margin > 0:
        scale = margin
        roll_thr, prom_thr = -m_rollback * margin, -m_promote * margin
    else:
        # No margin (success/info KPIs, or relative margin without a baseline estimate):
        # test against zero, with the mixture scaled to a tenth of the value.
        scale = 0.1 * abs(bv) if math.isfinite(bv) and bv != 0 else 0.01
        roll_thr, prom_thr = 0.0, 0.0
    return Measurement(statistic, bv, cv, samples, (test,), (test,), roll_thr, prom_thr,
                       scale, missing)


_MEASURES = {
    KpiKind.PROPORTION: _measure_proportion,
    KpiKind.MEAN: _measure_mean,
    KpiKind.QUANTILE: _measure_quantile,
    KpiKind.AUC: _measure_auc,
    KpiKind.FAIRNESS: _measure_fairness,
    KpiKind.BUSINESS: _measure_business,
}


def measure(kpi: KpiSpec, samples: Strata, m_rollback: float,
            m_promote: float) -> Measurement:
    """Measure ``kpi`` over the strata ``samples``.

    ``m_rollback`` and ``m_promote`` multiply the KPI's margin for the two thresholds
    (0 and 1 for a critical KPI; 1 and the stage's ``promote_margin_scale`` otherwise).
    """
    if not samples:
        return _missing(kpi, "no samples yet")
    return _MEASURES[kpi.kind](kpi, samples, m_rollback, m_promote)


# --- the candidate's own value (hard limits, registry control limits) -----------------

@dataclass(frozen=True)
class OwnValue:
    """Tests of the candidate's own KPI value against a fixed threshold (better-positive)."""

    tests_rollback: tuple[Test, ...]
    tests_promote: tuple[Test, ...]
    scale: float


def own_value(kpi: KpiSpec, candidate: RoleAggregate, threshold: float, scale: float
              ) -> OwnValue | None:
    """Test the candidate's pooled value against ``threshold`` (KPI units).

    ``scale`` is the distance from the threshold at which the decision matters (sets τ).
    Returns ``None`` when the data cannot support an estimate yet.
    """
    sign = _sign(kpi)
    kind = kpi.kind
    if kind is KpiKind.PROPORTION:
        if kpi.metric == "f1":
            r, var, n = _f1(candidate)
        else:
            x, n = _counts(kpi, candidate)
            if n == 0:
                return None
            r, var = _ac(x, n)
        t = Test("", sign * (r - threshold), var)
        return OwnValue((t,), (t,), scale) if t.usable else None
    if kind is KpiKind.MEAN:
        if kpi.source == LATENCY:
            h = candidate.latency
            if h.n < MIN_UNITS or threshold <= 0:
                return None
            t = Test("", sign * (h.mean_log() - math.log(threshold)), h.var_log() / h.n)
            return OwnValue((t,), (t,), math.log1p(scale / threshold))
        v = candidate.values
        name = kpi.source or ""
        if v is None or v.n < MIN_UNITS:
            return None
        t = Test("", sign * (v.mean(name) - threshold), v.cov(name, name) / v.n)
        return OwnValue((t,), (t,), scale) if t.usable else None
    if kind is KpiKind.QUANTILE:
        h = candidate.latency
        if h.n == 0:
            return None
        q = kpi.q or 0.95
        er, vr = _exceed(h, threshold, "up")
        ep, vp = _exceed(h, threshold, "down")
        # Better-positive: the exceedance of the limit is below 1 − q ⇔ quantile below limit.
        return OwnValue((Test("", (1 - q) - er, vr),), (Test("", (1 - q) - ep, vp),),
                        (1 - q) / 2)
    if kind is KpiKind.AUC:
        s = candidate.scores
        if min(s.n_pos, s.n_neg) < MIN_UNITS // 3:
            return None
        t = Test("", sign * (s.auc() - threshold), s.auc_variance())
        return OwnValue((t,), (t,), scale) if t.usable else None
    if kind is KpiKind.FAIRNESS:
        rates = segment_rates(kpi, candidate)
        if len(rates) < 2 or threshold <= 0:
            return None
        logs = {s: _log_rate(*r) for s, r in rates.items()}
        tests = tuple(
            Test(f"{kpi.segment_by}={a} vs {b}", logs[a][0] - logs[b][0] - math.log(threshold),
                 logs[a][1] + logs[b][1])
            for a, b in permutations(sorted(logs), 2)
        )
        return OwnValue(tests, tests, math.log1p(scale / threshold))
    if kind is KpiKind.BUSINESS:
        r, var, _ = _business_ratio(kpi, candidate)
        t = Test("", sign * (r - threshold), var)
        return OwnValue((t,), (t,), scale) if t.usable else None
    raise ValueError(f"unknown KPI kind {kind}")


def kpi_value(kpi: KpiSpec, agg: RoleAggregate) -> float:
    """The KPI's plain value for one role's aggregate, in KPI units (NaN if undefined).

    Proportions as rates, latency means as geometric means and quantiles in seconds, AUC,
    the fairness index (min/max across segments), business ratios.
    """
    kind = kpi.kind
    if kind is KpiKind.PROPORTION:
        if kpi.metric == "f1":
            return _f1(agg)[0]
        return _ratio(*_counts(kpi, agg))
    if kind is KpiKind.MEAN:
        if kpi.source == LATENCY:
            return math.exp(agg.latency.mean_log()) if agg.latency.n else NAN
        v = agg.values
        return v.mean(kpi.source or "") if v is not None and v.n else NAN
    if kind is KpiKind.QUANTILE:
        return agg.latency.quantile(kpi.q or 0.95) if agg.latency.n else NAN
    if kind is KpiKind.AUC:
        return agg.scores.auc()
    if kind is KpiKind.FAIRNESS:
        return fairness_index(segment_rates(kpi, agg))
    if kind is KpiKind.BUSINESS:
        return _business_ratio(kpi, agg)[0]
    raise ValueError(f"unknown KPI kind {kind}")

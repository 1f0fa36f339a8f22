"""Decision efficiency of rollout rules, side by side on the same synthetic streams.

Rules (see mlflow_kpigate/simulate/):
  paper           the case study's rule: roll back when a KPI in the latest interval is more
                  than 2σ (registry σ of the baseline's per-interval KPI) from its mean;
  ztest           fixed-horizon one-sided z bounds re-checked at every interval (peeking);
  kpigate         the gate on the policy as given (canary only: 5 -> 25 -> 50 -> 100%);
  kpigate_shadow  the gate on the same policy with a shadow stage first (simulate/variants.py:
                  the shadow stage copies the first stage's settings; both models' outcomes
                  on its requests correlate at the scenario's candidate.correlation, 0.8 by
                  default, and the gate compares them paired);
  oracle          Wald's SPRT with the scenario's baseline and candidate truth known, at the
                  gate's per-KPI rollback α and look schedule; rolls back, never promotes
                  (simulate/oracle.py). Worse scenarios only ("n/a" elsewhere).

Scenario sets (--set):
  main         the built-in scenarios (simulate/scenarios.py) on --policy at
               --requests-per-interval per interval and --horizon intervals, plus, each with
               an equal and a recall −5 candidate: prevalence 0.2% (8 h horizon), labels
               after 15 minutes, and the 20-KPI policy (policies/fraud_20kpis.yaml);
  low-traffic  2 requests/s, labels after 1 h, a 30-day horizon, policies/low_traffic.yaml
               (hourly looks), equal and recall −5 candidates;
  bake         the main stream with a 24-hour bake after promotion (policies/fraud_bake.yaml):
               equal, recall drifting −5 points over 4 h from the start and from the
               promotion; a 27-hour horizon;
  all          all three.
--scenario-file runs a file's scenarios on --policy instead.

The canary-only rules see the same random numbers while in the same stage (common random
numbers); kpigate_shadow's stages are numbered one later, so its draws are independent.
Figures per scenario and rule: see mlflow_kpigate/simulate/figures.py; the kpigate rules
also get the forecast time to decision beside the simulated one (decision_forecast.py:
``forecast_hours``, ``forecast_hours_mean``).

    .venv/bin/python benchmarks/decision_efficiency.py [--reps 200] [--seed 1] [--json]
        [--set main|low-traffic|bake|all] [--only NAME,...] [--rules RULE,...]
        [--policy FILE] [--scenario-file FILE] [--requests-per-interval N] [--horizon N]
        [--markdown] [--update-readme README.md] [--from-json FILE]

Re-measure the README's tables (one command):
    .venv/bin/python benchmarks/decision_efficiency.py --set all --reps 200 \
        --update-readme README.md
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from decision_forecast import (  # noqa: E402
    FORECASTING,
    created_hours,
    equal_while_rolling_out,
)
from decision_tables import markdown, print_tables, update_readme  # noqa: E402

from mlflow_kpigate.core.errors import KpigateError  # noqa: E402
from mlflow_kpigate.gate.planning import wald_asn  # noqa: E402
from mlflow_kpigate.policy import Policy, load_policy  # noqa: E402
from mlflow_kpigate.simulate import (  # noqa: E402
    BUILTIN,
    RULES,
    KpigateRule,
    OracleRule,
    Rule,
    RunRecord,
    StreamSpec,
    builtin,
    load_scenarios,
    oracle_tests,
    registry_from_stream,
    run_rollout,
    should_promote,
    summarise,
    with_shadow_stage,
)

RULE_ORDER = ("paper", "ztest", "kpigate", "kpigate_shadow", "oracle")
POLICIES = HERE / "policies"
DEFAULT_POLICY = POLICIES / "fraud_benchmark.yaml"
DEFAULT_STREAM = {"requests_per_interval": 200_000, "horizon": 120}
# Stream conditions: (stream settings, policy file or None for --policy, candidates).
MAIN_CONDITIONS: dict[str, tuple[dict[str, Any], Path | None, tuple[str, ...]]] = {
    "prevalence-0.2%": ({"prevalence": 0.002, "horizon": "8h"}, None,
                        ("equal", "recall-minus-5")),
    "label-delay-15m": ({"label_delay": "15m"}, None, ("equal", "recall-minus-5")),
    "20-kpis": ({}, POLICIES / "fraud_20kpis.yaml", ("equal", "recall-minus-5")),
}
# A 24-hour bake after promotion (fraud_bake.yaml): false rollbacks over a whole bake, and
# drift caught after promotion (from the start, and starting at the promotion).
BAKE: dict[str, tuple[dict[str, Any], Path | None, tuple[str, ...]]] = {
    "bake-24h": ({"horizon": "27h"}, POLICIES / "fraud_bake.yaml",
                 ("equal", "recall-drift", "drift-after-promotion")),
}
LOW_TRAFFIC: dict[str, tuple[dict[str, Any], Path | None, tuple[str, ...]]] = {
    "low-traffic": ({"requests_per_second": 2, "label_delay": "1h", "horizon": "30d"},
                    POLICIES / "low_traffic.yaml", ("equal", "recall-minus-5")),
}
# STATISTICS.md ("Sample sizes"): the oracle SPRT's exposure for recall −5 at 2-minute looks
# of 10k candidate requests, α = 0.0125 per KPI.
DOCUMENTED_ORACLE = {"alpha": 0.0125, "exposure": 33_900}


@dataclass(frozen=True)
class Case:
    """One scenario row: a stream (in its policy's intervals) and the policy it runs on."""

    name: str
    stream: StreamSpec
    policy: Policy
    policy_file: str
    good: bool
    group: str = "main"  # the --set it belongs to (its README block)


def _make_rule(name: str, stream: StreamSpec) -> Rule:
    if name == "oracle":
        return OracleRule(stream)
    if name == "oracle_wald":  # two boundaries, remembers accepted KPIs: one per run
        return OracleRule(stream, accept_h0=True)
    if name == "kpigate_shadow":
        return KpigateRule()
    rule: Rule = RULES[name]()
    return rule


def _run_chunk(args: tuple[Policy, StreamSpec, str, int, list[int], Any]) -> list[RunRecord]:
    policy, stream, rule_name, seed, reps, registry = args
    # The controller's forecast is kept for the gate's rules on equal candidates.
    forecast = rule_name in FORECASTING and equal_while_rolling_out(stream)
    return [RunRecord.of(run_rollout(policy, stream, _make_rule(rule_name, stream), seed=seed,
                                     rep=rep, registry=registry), policy if forecast else None)
            for rep in reps]


def _case(name: str, stream: StreamSpec, policy: Policy, policy_file: str,
          group: str = "main") -> Case:
    stream = stream.per_interval(policy.evaluation.interval)
    return Case(name, stream, policy, policy_file, should_promote(stream), group)


def build_cases(which: str, policy: Policy, policy_file: str, base: dict[str, Any]
                ) -> list[Case]:
    """The scenario rows of a --set (``base``: the main set's stream settings)."""
    cases: list[Case] = []
    conditions: list[tuple[str, str, tuple[dict[str, Any], Path | None, tuple[str, ...]]]] = []
    if which in ("main", "all"):
        cases += [_case(n, builtin(n, base), policy, policy_file) for n in BUILTIN]
        conditions += [("main", k, v) for k, v in MAIN_CONDITIONS.items()]
    if which in ("low-traffic", "all"):
        conditions += [("low-traffic", k, v) for k, v in LOW_TRAFFIC.items()]
    if which in ("bake", "all"):
        conditions += [("bake", k, v) for k, v in BAKE.items()]
    for group, cond, (settings, pfile, candidates) in conditions:
        pol = policy if pfile is None else load_policy(pfile)
        stream = {**base, **settings}
        if "requests_per_second" in settings:
            stream.pop("requests_per_interval", None)
        for cand in candidates:
            cases.append(_case(f"{cond}/{cand}", builtin(cand, stream), pol,
                               policy_file if pfile is None else str(pfile.relative_to(
                                   HERE.parent)), group))
    return cases


def run(cases: list[Case], rules: list[str], reps: int, seed: int, workers: int,
        oracle_check: Case | None = None) -> dict[str, Any]:
    """Run every rule on every case; return the JSON-shaped results."""
    n_chunks = max(1, workers * 2)
    chunks = [c for c in (list(range(i, reps, n_chunks)) for i in range(n_chunks)) if c]
    jobs: list[tuple[tuple[str, str], tuple[Any, ...]]] = []
    registries = {}
    for case in cases:
        registry = registries[case.name] = registry_from_stream(case.policy, case.stream, seed)
        shadow = with_shadow_stage(case.policy) if "kpigate_shadow" in rules else None
        for rule in rules:
            if rule == "oracle" and (case.good or not oracle_tests(case.policy, case.stream,
                                                                   registry)):
                continue
            policy = shadow if rule == "kpigate_shadow" and shadow else case.policy
            for chunk in chunks:
                jobs.append(((case.name, rule), (policy, case.stream, rule, seed, chunk,
                                                 registry)))
        if case is oracle_check:
            for chunk in chunks:
                jobs.append(((case.name, "oracle_wald"), (case.policy, case.stream,
                                                          "oracle_wald", seed, chunk, registry)))
    collected: dict[tuple[str, str], list[RunRecord]] = {}
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [(key, pool.submit(_run_chunk, args)) for key, args in jobs]
        for key, fut in futures:
            collected.setdefault(key, []).extend(fut.result())
    out: dict[str, Any] = {"scenarios": {}, "cases": {}}
    for case in cases:
        interval = case.policy.evaluation.interval
        out["scenarios"][case.name] = {
            rule: summarise(collected[(case.name, rule)], case.good, interval)
            for rule in rules if (case.name, rule) in collected}
        for rule, cell in out["scenarios"][case.name].items():
            policy = with_shadow_stage(case.policy) if rule == "kpigate_shadow" \
                else case.policy
            cell["forecast_hours"] = created_hours(policy, case.stream,
                                                   registries[case.name]) \
                if rule in FORECASTING else None
        out["cases"][case.name] = {
            "description": case.stream.description, "policy": case.policy_file,
            "set": case.group,
            "should_promote": case.good, "interval_seconds": interval,
            "requests_per_interval": case.stream.requests_per_interval,
            "horizon_intervals": case.stream.horizon_intervals,
            "label_delay_seconds": case.stream.label_delay_s,
            "prevalence": case.stream.prevalence, "decisive_kpis":
                sum(1 for k in case.policy.kpis if k.decides)}
        if (case.name, "oracle_wald") in collected:
            out["oracle_wald"] = summarise(collected[(case.name, "oracle_wald")], False,
                                           interval)
    return out


def _oracle_check(result: dict[str, Any], case: Case | None) -> dict[str, Any] | None:
    """The oracle's recall −5 exposure against STATISTICS.md's 33.9k."""
    wald = result.pop("oracle_wald", None)
    if case is None or wald is None:
        return None
    tests = oracle_tests(case.policy, case.stream)
    one = result["scenarios"][case.name].get("oracle", {})
    return {"scenario": case.name, "alpha_per_kpi": tests[0].alpha if tests else None,
            "documented_exposure": DOCUMENTED_ORACLE["exposure"],
            "documented_alpha": DOCUMENTED_ORACLE["alpha"],
            "one_sided_exposure_mean": one.get("exposure_mean"),
            "two_boundary_exposure_mean": wald["exposure_mean"],
            "two_boundary_power": wald["power"]}


def check_targets(result: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """The issue's targets for kpigate's engine, measured."""
    sc = result["scenarios"]
    rows: list[tuple[str, str, bool]] = []
    for name in ("equal", "recall-plus-3.2"):
        if name in sc and "kpigate" in sc[name]:
            r = sc[name]["kpigate"]["false_rollback_rate"]
            rows.append((f"false rollback ≤ 5% ({name})", f"{r * 100:.1f}%", r <= 0.05))
    if "recall-minus-5" in sc and "kpigate" in sc["recall-minus-5"]:
        e = sc["recall-minus-5"]["kpigate"]["exposure_mean"]
        w = result["bounds"]["wald_asn_requests"]
        if e is not None:
            rows.append(("exposure to detect −5 points ≤ 1.5× Wald", f"{e / w:.2f}×",
                         e / w <= 1.5))
    if "recall-plus-3.2" in sc and "kpigate" in sc["recall-plus-3.2"]:
        p = sc["recall-plus-3.2"]["kpigate"]["promote_rate"]
        rows.append(("≥ 95% of +3.2-point candidates promoted", f"{p * 100:.1f}%", p >= 0.95))
    if "segment-fpr-x1.5" in sc and "kpigate" in sc["segment-fpr-x1.5"]:
        c = sc["segment-fpr-x1.5"]["kpigate"]["power"]
        promoted = sc["segment-fpr-x1.5"]["kpigate"]["promote_rate"]
        rows.append(("segment FPR ×1.5 rolled back ≥ 90%",
                     f"{c * 100:.1f}% (promoted {promoted * 100:.1f}%)", c >= 0.9))
    return rows


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--policy", default=str(DEFAULT_POLICY))
    parser.add_argument("--scenario-file", help="YAML/JSON scenarios instead of the built-in")
    parser.add_argument("--set", dest="which", choices=("main", "low-traffic", "bake", "all"),
                        default="main", help="built-in scenario set (default: main)")
    parser.add_argument("--only", help="comma-separated scenario names to run (of the set)")
    parser.add_argument("--rules", default=",".join(RULE_ORDER),
                        help=f"comma-separated rules (default: {','.join(RULE_ORDER)})")
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--requests-per-interval", type=int,
                        default=DEFAULT_STREAM["requests_per_interval"])
    parser.add_argument("--horizon", type=int, default=DEFAULT_STREAM["horizon"],
                        help="evaluation intervals per run (main set, built-in scenarios)")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    parser.add_argument("--markdown", action="store_true", help="print the README's tables")
    parser.add_argument("--update-readme", metavar="README",
                        help="replace the tables between the README's markers")
    parser.add_argument("--from-json", metavar="FILE", action="append",
                        help="render saved --json results instead of running (repeatable)")
    return parser


def _render_saved(args: argparse.Namespace) -> int:
    """--markdown / --update-readme / tables from saved --json outputs."""
    blocks: dict[str, str] = {}
    for path in args.from_json:
        result = json.loads(Path(path).read_text(encoding="utf-8"))
        groups = list(dict.fromkeys(c["set"] for c in result["cases"].values()))
        for g in groups:
            blocks[g] = markdown(result, g)
        if not args.markdown and not args.update_readme:
            _print_text(result, len(result["cases"]))
    if args.update_readme:
        update_readme(args.update_readme, blocks)
    if args.markdown:
        print("\n".join(blocks.values()), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.from_json:
        return _render_saved(args)
    rules = [r.strip() for r in args.rules.split(",") if r.strip()]
    unknown = [r for r in rules if r not in RULE_ORDER]
    if unknown or not rules:
        print(f"error: --rules: unknown {unknown or 'empty'}; choose from "
              f"{', '.join(RULE_ORDER)}", file=sys.stderr)
        return 2
    try:
        policy = load_policy(args.policy)
        if args.scenario_file:
            cases = [_case(s.name, s, policy, args.policy, "file")
                     for s in load_scenarios(args.scenario_file)]
        else:
            base = {"requests_per_interval": args.requests_per_interval,
                    "horizon": args.horizon}
            cases = build_cases(args.which, policy, args.policy, base)
    except KpigateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        missing = sorted(set(wanted) - {c.name for c in cases})
        if missing:
            print(f"error: --only: no scenario {', '.join(missing)} in this set; have "
                  f"{', '.join(c.name for c in cases)}", file=sys.stderr)
            return 2
        cases = [c for c in cases if c.name in wanted]
    check = next((c for c in cases if c.name == "recall-minus-5"), None)
    check = check if "oracle" in rules and not args.scenario_file else None
    started = time.perf_counter()
    result = run(cases, rules, args.reps, args.seed, args.workers, check)
    first = cases[0]
    ev = first.policy.evaluation
    p0, prev = first.stream.baseline.recall, first.stream.prevalence
    asn = wald_asn(p0, p0 - 0.05, ev.alpha_rollback, 1 - ev.power)
    result["bounds"] = {"wald_asn_requests": asn / prev, "wald_asn_positives": asn,
                        "recall_p0": p0, "recall_p1": p0 - 0.05, "alpha": ev.alpha_rollback,
                        "power": ev.power, "oracle_check": _oracle_check(result, check)}
    command = " ".join(["benchmarks/decision_efficiency.py", *(argv or sys.argv[1:])])
    result["settings"] = {"policy": args.policy, "reps": args.reps, "seed": args.seed,
                          "requests_per_interval": first.stream.requests_per_interval,
                          "horizon_intervals": first.stream.horizon_intervals,
                          "interval_seconds": ev.interval, "set": args.which,
                          "rules": rules, "workers": args.workers, "command": command,
                          "seconds": round(time.perf_counter() - started, 1)}
    groups = list(dict.fromkeys(c.group for c in cases))
    if args.update_readme:
        update_readme(args.update_readme, {g: markdown(result, g) for g in groups})
    if args.json:
        print(json.dumps(result, indent=2))
    elif args.markdown:
        print("\n".join(markdown(result, g) for g in groups), end="")
    else:
        _print_text(result, len(cases))
    return 0


def _print_text(result: dict[str, Any], n_cases: int) -> None:
    s = result["settings"]
    print(f"decision efficiency: {n_cases} scenarios × {len(s['rules'])} rules × {s['reps']} "
          f"runs; policy {s['policy']} unless a scenario names its own:")
    for name, case in result["cases"].items():
        print(f"  {name}: {case['requests_per_interval']:,} requests per "
              f"{case['interval_seconds']:g} s, horizon {case['horizon_intervals']} looks, "
              f"labels after {case['label_delay_seconds']:g} s, prevalence "
              f"{case['prevalence']:.2%}, {case['decisive_kpis']} decisive KPIs"
              + ("" if case["policy"] == s["policy"] else f", {case['policy']}"))
    print_tables(result)
    b = result["bounds"]
    print(f"\nWald's SPRT expected sample number for recall {b['recall_p0']} → "
          f"{b['recall_p1']:.3f} (known baseline, α={b['alpha']}, power {b['power']}): "
          f"{b['wald_asn_positives']:.0f} labelled positives ≈ "
          f"{b['wald_asn_requests']:,.0f} candidate requests")
    oc = b["oracle_check"]
    if oc and oc["one_sided_exposure_mean"] is not None:
        print(f"oracle check ({oc['scenario']}, α = {oc['alpha_per_kpi']:g} per KPI): "
              f"one-sided {oc['one_sided_exposure_mean']:,.0f}; Wald's two boundaries "
              f"{oc['two_boundary_exposure_mean'] or 0:,.0f} over its rollbacks (power "
              f"{(oc['two_boundary_power'] or 0) * 100:.1f}%); STATISTICS.md "
              f"{oc['documented_exposure']:,} at α = {oc['documented_alpha']}")
    targets = check_targets(result)
    if targets:
        print("\ntargets (kpigate):")
    for name, value, ok in targets:
        print(f"  [{'met' if ok else 'NOT met'}] {name}: {value}")
    print(f"\n({s['seconds']} s)")


if __name__ == "__main__":
    raise SystemExit(main())

"""The live view of one rollout as a ``rich`` renderable: a pure function of its state.

:func:`rollout_view` draws, from top to bottom: the rollout (name, phase, versions), the
stage ladder with the current stage highlighted, the traffic split as a bar, the current
stage's requirements seen against needed (:mod:`.progress`), the last decision, the
per-KPI evidence table and the time-to-decision forecast (or, while baking, the bake's
progress). Nothing here reads a store or writes to a terminal; the numbers are formatted
by the same code as ``kpigate status``, the report and the pull-request comment
(:func:`~mlflow_kpigate.report.kpi_table.kpi_rows`, :class:`~mlflow_kpigate.core.forecast.
Forecast`, :func:`~mlflow_kpigate.core.bake.bake_view`), so a value reads the same there.
Text from policies, models and reasons is data: it is never parsed as ``rich`` markup.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.measure import Measurement
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from mlflow_kpigate.console.progress import Requirement, stage_requirements
from mlflow_kpigate.core.bake import bake_view
from mlflow_kpigate.core.decision import Action, Decision, Verdict
from mlflow_kpigate.core.durations import format_duration
from mlflow_kpigate.core.forecast import forecast_view
from mlflow_kpigate.core.state import Phase, RolloutState, Weights
from mlflow_kpigate.policy import Policy
from mlflow_kpigate.report.formats import NumberStyle
from mlflow_kpigate.report.kpi_table import KpiRow, kpi_rows, verdict_words

__all__ = ["KpiTable", "decision_of", "rollout_view", "stage_ladder", "traffic_bar"]

#: The console's numbers (as ``kpigate status``'s table: blanks for missing values, four
#: decimals for signed ones, infinities shown).
LIVE = NumberStyle(missing="", keep_infinite=True, signed="+.4f", pair_on_first=True,
                   samples_sep=" / ", omit_unknown_target=True)
#: Width of the traffic bar and of the requirement bars, in cells.
BAR = 40
REQUIREMENT_BAR = 24
_ACTION_STYLE = {Action.PROMOTE: "bold green", Action.HOLD: "bold yellow",
                 Action.ROLLBACK: "bold red"}
_PHASE_STYLE = {Phase.PROMOTED: "bold green", Phase.ROLLED_BACK: "bold red",
                Phase.ABORTED: "bold red", Phase.HOLDING: "bold yellow",
                Phase.BAKING: "bold cyan"}
#: Phases whose forecast is history, not a forecast (as ``kpigate status``).
_NO_FORECAST = (Phase.PROMOTED, Phase.ROLLED_BACK, Phase.ABORTED, Phase.BAKING)


def decision_of(state: RolloutState) -> Decision | None:
    """The last decision saved with ``state`` (None before the first, or unreadable)."""
    if not state.last_decision:
        return None
    try:
        return Decision.from_dict(state.last_decision)
    except (KeyError, TypeError, ValueError):
        return None  # a record from another version: show the rest


def _header(state: RolloutState) -> Text:
    text = Text()
    text.append(state.name, style="bold")
    text.append("  ")
    text.append(state.status, style=_PHASE_STYLE.get(state.phase, "bold"))
    if state.paused:
        text.append(" (paused)", style="bold magenta")
    text.append(f"  {state.model_name} v{state.candidate_version} vs baseline "
                f"v{state.baseline_version}", style="dim")
    text.append(f"  evaluations {state.evaluations}", style="dim")
    return text


def stage_ladder(state: RolloutState, policy: Policy | None) -> Text:
    """``✓ shadow → ▶ 5% → 25% → 100%``: passed stages ticked, the current one marked and
    highlighted (``✗`` once rolled back or aborted there), later ones dim."""
    names = [s.describe() for s in policy.stages] if policy is not None else []
    if not 0 <= state.stage_index < len(names):
        names = [f"stage {state.stage_index}"]
        current = 0
    else:
        current = state.stage_index
    ended_badly = state.phase in (Phase.ROLLED_BACK, Phase.ABORTED)
    text = Text("stages   ", style="bold")
    for i, name in enumerate(names):
        if i:
            text.append(" → ", style="dim")
        if i < current or (i == current and state.phase is Phase.PROMOTED):
            text.append(f"✓ {name}", style="green")
        elif i == current:
            mark = "✗" if ended_badly else "▶"
            style = "bold white on red" if ended_badly else "bold black on yellow"
            text.append(f" {mark} {name} ", style=style)
        else:
            text.append(name, style="dim")
    if state.phase is Phase.BAKING:
        text.append("  baking", style="bold cyan")
    return text


def traffic_bar(weights: Weights, width: int = BAR) -> Text:
    """The split as words and a bar: baseline cells ``█`` in blue, candidate cells ``▓``
    in magenta (a shadow candidate is shown beside a full baseline bar)."""
    text = Text("traffic  ", style="bold")
    text.append(weights.describe())
    text.append("  ")
    share = 0.0 if not weights.candidate_attached or weights.shadow \
        else weights.candidate_percent / 100
    candidate = round(width * share)
    if share > 0 and candidate == 0:
        candidate = 1  # a 1% stage still shows
    text.append("█" * (width - candidate), style="blue")
    text.append("▓" * candidate, style="magenta")
    if weights.shadow and weights.candidate_attached:
        text.append(" + candidate shadow", style="magenta")
    return text


def _amount(value: float | None, seconds: bool) -> str:
    if value is None:
        return "—"
    if seconds:
        return format_duration(value) if value >= 1 else "0s"
    return f"{value:,.0f}"


def _requirements(reqs: tuple[Requirement, ...]) -> Table:
    table = Table(box=None, show_header=False, padding=(0, 1), pad_edge=False)
    table.add_column("requirement", style="bold", no_wrap=True)
    table.add_column("seen", justify="right", no_wrap=True)
    table.add_column("bar", no_wrap=True)
    table.add_column("state")  # wraps first on a narrow terminal
    for r in reqs:
        seen = f"{_amount(r.seen, r.seconds)} / {_amount(r.needed, r.seconds)}"
        if r.limit is not None:
            seen += f" (max {format_duration(r.limit)})"
        bar = ProgressBar(total=1000, completed=round(1000 * r.share),
                          width=REQUIREMENT_BAR, complete_style="green" if r.met else "yellow",
                          finished_style="green")
        state = Text("met", style="green") if r.met else Text(
            "not yet" if r.seen is not None else "no evaluation in this stage yet", style="dim")
        table.add_row(Text(r.label), seen, bar, state)
    return table


def _verdict(verdict: Verdict) -> Text:
    if verdict.blocks_rollout:
        style = "bold red"
    elif verdict in (Verdict.NON_INFERIOR, Verdict.BETTER, Verdict.NO_REGRESSION):
        style = "green"
    elif verdict in (Verdict.INCONCLUSIVE, Verdict.INSUFFICIENT_DATA):
        style = "yellow"
    else:
        style = "dim"
    return Text(verdict_words(verdict), style=style)


#: The KPI table's columns: header and cell of a row; the ones a narrow terminal drops
#: first come first in :data:`_OPTIONAL`.
_COLUMNS: tuple[tuple[str, Callable[[KpiRow], Text | str]], ...] = (
    ("KPI", lambda r: Text(r.kpi)),
    ("role", lambda r: Text(r.role)),
    ("baseline", lambda r: r.baseline),
    ("candidate", lambda r: r.candidate),
    ("cand−base", lambda r: r.difference),
    ("bounds (+ better)", lambda r: r.interval),
    ("thresholds", lambda r: r.thresholds),
    ("margin", lambda r: Text(r.margin)),
    ("samples", lambda r: r.samples),
    ("verdict", lambda r: _verdict(r.verdict)),
)
_OPTIONAL = ("baseline", "candidate", "margin", "role", "thresholds")


class KpiTable:
    """One row per KPI: the estimate (candidate − baseline), the anytime-valid bounds
    against their thresholds (which the margin sets), the margin, samples seen / needed
    and the verdict. On a terminal too narrow for every column it leaves out, in turn,
    the two values, the margin, the role and the thresholds, rather than wrap numbers."""

    def __init__(self, decision: Decision, policy: Policy | None) -> None:
        self.rows = kpi_rows(decision, policy, style=LIVE)

    def table(self, dropped: Sequence[str] = ()) -> Table:
        """The table without the columns ``dropped``."""
        table = Table(box=None, padding=(0, 1), pad_edge=False, header_style="bold")
        columns = [(h, cell) for h, cell in _COLUMNS if h not in dropped]
        for header, _ in columns:
            table.add_column(header, no_wrap=header != "KPI")
        for row in self.rows:
            table.add_row(*(cell(row) for _, cell in columns))
        return table

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        for n in range(len(_OPTIONAL) + 1):
            table = self.table(_OPTIONAL[:n])
            natural = Measurement.get(console, options.update_width(10_000), table).maximum
            if natural <= options.max_width:
                break
        yield table


def _decision_line(decision: Decision, state: RolloutState) -> Text:
    """The action and its reason on one line (cut to the width: the table and the
    requirements above say the rest; ``watch`` prints the whole reason above the view)."""
    text = Text("last     ", style="bold", no_wrap=True, overflow="ellipsis")
    text.append(decision.action.value, style=_ACTION_STYLE.get(decision.action, "bold"))
    if decision.stage_index != state.stage_index:
        text.append(f" (at {decision.stage_name})")
    prefix = f"{decision.action.value}: "
    reason = decision.reason[len(prefix):] if decision.reason.startswith(prefix) \
        else decision.reason
    text.append(f": {reason}")
    return text


def _outlook(decision: Decision, state: RolloutState) -> list[RenderableType]:
    """The bake's progress while baking, else the forecast (none once ended)."""
    if state.phase is Phase.BAKING:
        bake = bake_view(decision)
        return [Text.assemble(("bake     ", "bold"), bake.line())] if bake else []
    fc = forecast_view(decision) if state.phase not in _NO_FORECAST else None
    if fc is None:
        return []
    out: list[RenderableType] = [Text.assemble(("forecast ", "bold"), fc.line())]
    if len(fc.stages) > 1:
        out.append(Text(f"         stages: {fc.path()}", style="dim"))
    out.append(Text(f"         at {fc.basis_line()}", style="dim"))
    out += [Text(f"warning  {w}", style="yellow") for w in fc.warnings()]
    return out


def rollout_view(state: RolloutState, policy: Policy | None, now: float) -> RenderableType:
    """The whole view of rollout ``state`` (its frozen ``policy``, None if unreadable) at
    time ``now`` (seconds since the epoch: the dwell time counts up to it)."""
    decision = decision_of(state)
    parts: list[RenderableType] = [_header(state), stage_ladder(state, policy),
                                   traffic_bar(state.weights)]
    reqs = stage_requirements(state, policy, decision, now)
    if reqs:
        parts += [Text("stage progress", style="bold"), _requirements(reqs)]
    if decision is None:
        parts.append(Text.assemble(("last     ", "bold"),
                                   state.reason or "no evaluation yet"))
    else:
        parts.append(_decision_line(decision, state))
        if decision.evidence:
            parts.append(KpiTable(decision, policy))
        parts += _outlook(decision, state)
    return Panel(Group(*parts), title=Text(f"kpigate · {state.name}"), title_align="left",
                 border_style=_PHASE_STYLE.get(state.phase, "blue"))

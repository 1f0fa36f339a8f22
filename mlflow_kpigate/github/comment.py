"""The pull-request report: markdown rendering and the sticky comment.

:func:`render` turns a finished (or still running) rollout (a
:class:`~mlflow_kpigate.github.record.RolloutRecord`) into GitHub markdown:

1. the first line: outcome, model, stage and the reason;
2. a summary table with links to the MLflow rollout run and the model-version pages (only
   when the tracking URI is http(s)) and to the workflow run;
3. per stage, the KPI table of the stage's last evaluation (baseline and candidate
   estimates, Δ, the anytime-valid interval, margin, samples seen / needed, verdict), the
   rows of :mod:`mlflow_kpigate.report.kpi_table` as the report shows them;
   then the time-to-decision forecasts per stage against the actual (and, while the
   rollout runs, the latest forecast), as the report shows them;
4. the traffic timeline, and the Mermaid charts of :mod:`.charts`;
5. every evaluation in a ``<details>`` block, newest first;
6. the hidden marker ``<!-- kpigate:MODEL -->`` that makes the comment sticky.

GitHub refuses comments longer than :data:`MAX_COMMENT_CHARS`; when the rendering is
longer, the ``<details>`` block is cut (oldest evaluations first) and says so, the head
and the marker are kept.

Everything that comes from models, tags, policies and reasons is data: it is flattened
to one line, HTML-escaped, its markdown specials are backslash-escaped
(:func:`~mlflow_kpigate.report.blocks.md_escape`) and ``@`` gets a zero-width space so a
reason cannot mention (notify) people or teams.

:func:`upsert_comment` keeps one comment per model and pull request: it pages through the
pull request's comments (``Link: rel="next"``) for the marker, updates that comment in
place, or creates it when there is none.
"""

from __future__ import annotations

import math
import re
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

from mlflow_kpigate.core.decision import Decision
from mlflow_kpigate.core.forecast import HEADERS
from mlflow_kpigate.core.state import Phase
from mlflow_kpigate.github.api import GitHubClient
from mlflow_kpigate.github.charts import charts
from mlflow_kpigate.github.outcome import outcome_of
from mlflow_kpigate.github.record import Evaluation, Links, RolloutRecord
from mlflow_kpigate.policy import Policy
from mlflow_kpigate.report.blocks import md_escape
from mlflow_kpigate.report.forecast import RECORD_HEADERS, latest, record_rows, stage_records
from mlflow_kpigate.report.formats import DASH, fmt_count
from mlflow_kpigate.report.kpi_table import Column, kpi_rows, table_cells, verdict_badge

#: GitHub's limit for an issue or pull-request comment body.
MAX_COMMENT_CHARS = 65_536
#: Longest reason shown in the first line.
MAX_HEADLINE_REASON = 1_000
_ZWSP = "\u200b"

_MARKER_SAFE = re.compile(r"[^A-Za-z0-9_.\-]")
#: The KPI tables' columns (cells are escaped when the table is made).
_KPI_COLUMNS: tuple[Column, ...] = (
    ("KPI", lambda r: r.kpi),
    ("role", lambda r: r.role),
    ("baseline", lambda r: r.baseline),
    ("candidate", lambda r: r.candidate),
    ("Δ (cand − base)", lambda r: r.difference),
    ("bounds, + = better", lambda r: r.interval),
    ("margin", lambda r: r.margin),
    ("samples seen / needed", lambda r: r.samples),
    ("verdict", lambda r: verdict_badge(r.verdict)),
)


@dataclass(frozen=True)
class CommentResult:
    """What :func:`upsert_comment` did: ``created`` or ``updated`` comment ``id``."""

    action: str
    id: int
    url: str | None


# --------------------------------------------------------------------------------------
# Escaping and small formatters
# --------------------------------------------------------------------------------------

def text(value: object) -> str:
    """``value`` as inert one-line markdown that mentions nobody."""
    return md_escape(value).replace("@", "@" + _ZWSP)


def marker(model: str) -> str:
    """The hidden marker of ``model``'s comment.

    The name is percent-encoded outside ``[A-Za-z0-9_.-]`` and every ``-`` next to another
    ``-`` is encoded too, so no model name can close the HTML comment (``-->``) early or
    collide with another model's marker.
    """
    encoded = _MARKER_SAFE.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode()),
                               model)
    encoded = re.sub(r"-(?=-)|(?<=-)-", "%2D", encoded)
    return f"<!-- kpigate:{encoded} -->"


def safe_url(url: str) -> str:
    """``url`` with characters that could end a markdown link percent-encoded."""
    return urllib.parse.quote(url, safe=":/?#&=%@+,;~._-!$*'")


def _link(label: str, url: str | None) -> str | None:
    return f"[{label}]({safe_url(url)})" if url else None


def _time(ts: float) -> str:
    if not (isinstance(ts, (int, float)) and math.isfinite(ts)):
        return DASH
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _span(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _reason(decision: Decision) -> str:
    """The decision's reason, led by its action (the gate's reasons already start so)."""
    action = decision.action.value
    reason = decision.reason or "no reason given"
    return reason if reason.startswith(action) else f"{action}: {reason}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A markdown table; cells must already be escaped."""
    return ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|",
            *("| " + " | ".join(row) + " |" for row in rows)]


def _kpi_table(decision: Decision, policy: Policy | None) -> list[str]:
    rows = kpi_rows(decision, policy)
    if not rows:
        return ["*No KPI evidence in this evaluation.*"]
    headers, cells = table_cells(rows, _KPI_COLUMNS)
    return _table(headers, [[text(cell) for cell in row] for row in cells])


# --------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------

def headline(record: RolloutRecord, model: str) -> str:
    """The first line: outcome, model, candidate version, stage, and the reason."""
    state = record.state
    icon, words = outcome_of(state)
    last = record.evaluations[-1].decision if record.evaluations else None
    reason = state.reason or (last.reason if last else "no evaluation yet")
    if len(reason) > MAX_HEADLINE_REASON:
        reason = reason[:MAX_HEADLINE_REASON] + "…"
    return (f"{icon} **kpigate: {text(model)} version {text(state.candidate_version)} "
            f"{words}** at {text(record.final_stage)}: {text(reason)}")


def _summary(record: RolloutRecord, links: Links) -> list[str]:
    state = record.state
    mlflow = [x for x in (_link("rollout run", links.mlflow_run),
                          _link(f"candidate version {text(state.candidate_version)}",
                                links.candidate_version),
                          _link(f"baseline version {text(state.baseline_version)}",
                                links.baseline_version)) if x]
    rows = [
        ["model", f"{text(state.model_name)}: candidate version "
                  f"{text(state.candidate_version)} against baseline version "
                  f"{text(state.baseline_version)}"],
        ["outcome", f"{text(state.status)} at {text(record.final_stage)}; traffic now: "
                    f"{text(state.weights.describe())}"],
        ["evaluations", str(len(record.evaluations))],
        ["deployment", text(state.name)],
        ["rollout run", text(state.rollout_run_id or DASH)],
    ]
    if mlflow:
        rows.append(["MLflow", " · ".join(mlflow)])
    workflow = _link("logs and job summary", links.workflow_run)
    if workflow:
        rows.append(["workflow run", workflow])
    return _table(["", ""], rows)


def _stage_groups(evaluations: Sequence[Evaluation]) -> list[list[int]]:
    groups: list[list[int]] = []
    for i, ev in enumerate(evaluations):
        prev = evaluations[groups[-1][0]].decision.stage_index if groups else None
        if prev == ev.decision.stage_index:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def _stages(record: RolloutRecord) -> list[str]:
    out = ["#### Stages", ""]
    if not record.evaluations:
        return [*out, "*No evaluation has been made yet.*", ""]
    total = len(record.evaluations)
    for group in _stage_groups(record.evaluations):
        ev = record.evaluations[group[-1]]
        d = ev.decision
        span = (f"evaluation {group[0] + 1}" if len(group) == 1
                else f"evaluations {group[0] + 1}–{group[-1] + 1}")
        out += [f"**Stage {d.stage_index}: {text(d.stage_name)}** ({span} of {total}); "
                f"last decision: {text(_reason(d))}", ""]
        out += [*_kpi_table(d, record.policy), ""]
    return out


def _forecast(record: RolloutRecord) -> list[str]:
    """Per stage the forecast time to decision against the actual; the latest forecast of
    a rollout still running (:mod:`mlflow_kpigate.report.forecast`)."""
    decisions = [e.decision for e in record.evaluations]
    records = stage_records(decisions, [e.time for e in record.evaluations])
    phase = record.state.phase
    fc = latest(decisions) if not phase.terminal and phase is not Phase.BAKING else None
    if not records and fc is None:
        return []
    out = ["#### Time to decision (forecast)", ""]
    if records:
        out += [*_table(RECORD_HEADERS, [[text(c) for c in row]
                                         for row in record_rows(records)]), ""]
    if fc is not None:
        out += [f"**Now:** {text(fc.line())}", "", f"**Traffic:** {text(fc.basis_line())}",
                "", *_table(HEADERS, [[text(c) for c in row] for row in fc.rows()]), ""]
        out += [f"**Warning:** {text(w)}" for w in fc.warnings()]
        out += [""] if fc.warnings() else []
    return out


def _timeline(record: RolloutRecord) -> list[str]:
    out = ["#### Traffic timeline", ""]
    if not record.traffic:
        return [*out, "*No traffic change was recorded.*", ""]
    t0 = min(t for t, _ in record.traffic)
    rows = [[_time(t), _span(t - t0), f"{p:g}%"] for t, p in sorted(record.traffic)]
    return [*out, *_table(["time", "since start", "candidate traffic"], rows), ""]


def _details(record: RolloutRecord) -> list[str]:
    """Every evaluation, newest first (what truncation cuts from the end)."""
    out: list[str] = []
    total = len(record.evaluations)
    for n in range(total, 0, -1):
        ev = record.evaluations[n - 1]
        d = ev.decision
        out += [f"**Evaluation {n}** ({_time(ev.time)}, stage {text(d.stage_name)}): "
                f"{text(_reason(d))}", ""]
        out += [*_kpi_table(d, record.policy), ""]
        if d.checks:
            rows = [[text(c.name), fmt_count(c.seen), fmt_count(c.needed), "yes" if c.met else "no"]
                    for c in d.checks]
            out += [*_table(["stage requirement", "seen", "needed", "met"], rows), ""]
    return out


# --------------------------------------------------------------------------------------
# The document
# --------------------------------------------------------------------------------------

def render(record: RolloutRecord, links: Links, *, model: str | None = None,
           limit: int = MAX_COMMENT_CHARS, with_marker: bool = True) -> str:
    """The report as GitHub markdown, at most ``limit`` characters.

    ``model`` names the comment's marker (default: the state's model name).
    """
    name = model or record.state.model_name
    head = [headline(record, name), "", *_summary(record, links), "",
            *_stages(record), *_forecast(record), *_timeline(record), *charts(record)]
    tail = ["", marker(name)] if with_marker else []
    details = _details(record)
    open_tag = [f"<details><summary>Every evaluation ({len(record.evaluations)}, newest "
                "first)</summary>", ""]
    close_tag = ["", "</details>"]

    def size(lines: Sequence[str]) -> int:
        return len("\n".join(lines)) + 1

    fixed = size([*head, *open_tag, *close_tag, *tail])
    if fixed > limit:
        # Pathological (thousands of KPIs): keep the headline, cut the rest.
        note = "*(report cut: it is longer than a GitHub comment allows)*"
        budget = limit - size([*tail, "", note]) - 1
        kept: list[str] = []
        for line in head:
            if size([*kept, line]) > budget:
                break
            kept.append(line)
        return "\n".join([*kept, "", note, *tail]) + "\n"
    if details and fixed + size(details) > limit:
        omitted_note = ("*(older evaluations cut: the comment would exceed GitHub's "
                        f"{limit:,}-character limit; the job summary has them all)*")
        budget = limit - fixed - size(["", omitted_note])
        kept = []
        for line in details:
            if size([*kept, line]) > budget:
                break
            kept.append(line)
        details = [*kept, "", omitted_note]
    body = [*head, *(open_tag + details + close_tag if details else []), *tail]
    return "\n".join(body) + "\n"


# --------------------------------------------------------------------------------------
# The sticky comment
# --------------------------------------------------------------------------------------

def has_marker(body: object, mark: str) -> bool:
    """Whether a comment ``body`` carries the marker line ``mark``."""
    return isinstance(body, str) and any(line.strip() == mark for line in body.splitlines())


def find_comment(client: GitHubClient, repo: str, number: int, mark: str) -> dict | None:
    """The first comment of pull request ``number`` carrying ``mark`` (all pages read)."""
    for comment in client.paginate(f"/repos/{repo}/issues/{number}/comments"):
        if isinstance(comment, dict) and has_marker(comment.get("body"), mark):
            return comment
    return None


def upsert_comment(client: GitHubClient, repo: str, number: int, model: str,
                   body: str) -> CommentResult:
    """Update ``model``'s comment on pull request ``number`` in place, or create it."""
    mark = marker(model)
    if not has_marker(body, mark):
        raise ValueError("the comment body lacks the model's marker")
    existing = find_comment(client, repo, number, mark)
    if existing is not None:
        resp = client.request("PATCH", f"/repos/{repo}/issues/comments/{int(existing['id'])}",
                              {"body": body})
        action = "updated"
    else:
        resp = client.request("POST", f"/repos/{repo}/issues/{number}/comments",
                              {"body": body})
        action = "created"
    data = resp.data if isinstance(resp.data, dict) else {}
    return CommentResult(action, int(data.get("id") or (existing or {}).get("id") or 0),
                         data.get("html_url"))

"""What a rollout's outcome means on GitHub: its words and icon, the commit status, the
annotation, and whether it fails the workflow step (``--fail-on``).

One place, so the comment's headline, the job's annotation, the commit status and the
exit code cannot disagree about an outcome.
"""

from __future__ import annotations

from mlflow_kpigate.core.bake import outcome_words
from mlflow_kpigate.core.state import Phase, RolloutState
from mlflow_kpigate.github.record import RolloutRecord
from mlflow_kpigate.github.workflow import workflow_command

#: The ``--fail-on`` choices.
FAIL_ON = ("rollback", "hold", "never")
#: Phases that fail the step with ``--fail-on rollback`` (and ``hold``).
ROLLBACK_PHASES = (Phase.ROLLED_BACK, Phase.ABORTED)
#: GitHub's limit for a commit status description.
STATUS_DESCRIPTION_CHARS = 140

_OUTCOME = {
    Phase.BAKING: ("⏳", "promoted, baking"),
    Phase.PROMOTED: ("✅", "promoted"),
    Phase.ROLLED_BACK: ("❌", "rolled back"),
    Phase.ABORTED: ("⛔", "aborted"),
    Phase.HOLDING: ("⏸️", "holding"),
    Phase.CANARY: ("⏳", "still in progress"),
    Phase.SHADOW: ("⏳", "still in progress (shadow)"),
    Phase.PENDING: ("⏳", "pending"),
}
_STATUS_STATE = {Phase.PROMOTED: "success", Phase.ROLLED_BACK: "failure",
                 Phase.ABORTED: "error"}


def outcome(phase: Phase) -> tuple[str, str]:
    """(icon, words) for a phase, e.g. ``("❌", "rolled back")``."""
    return _OUTCOME.get(phase, ("⏳", phase.value))


def outcome_of(state: RolloutState) -> tuple[str, str]:
    """(icon, words) for a rollout, with its bake: ``("❌", "rolled back after promotion")``."""
    icon, words = outcome(state.phase)
    return icon, (outcome_words(state) if state.bake_started_at is not None else words)


def fails_step(phase: Phase, fail_on: str) -> bool:
    """Whether the outcome ``phase`` fails the step under ``--fail-on``.

    ``rollback``: a rollback or an abort fails; ``hold``: so does a rollout that has not
    ended (holding, or still in a stage when the wait stopped); ``never``: nothing does.
    """
    if fail_on == "never":
        return False
    if phase in ROLLBACK_PHASES:
        return True
    return fail_on == "hold" and not phase.terminal


def status_state(phase: Phase) -> str:
    """The commit status for ``phase``: success, failure, error, or pending (not ended)."""
    return _STATUS_STATE.get(phase, "pending")


def status_description(record: RolloutRecord) -> str:
    """One line of at most 140 characters: outcome, stage and reason."""
    _, words = outcome_of(record.state)
    reason = " ".join((record.state.reason or "").split())
    line = f"{words} at {record.final_stage}" + (f": {reason}" if reason else "")
    if len(line) > STATUS_DESCRIPTION_CHARS:
        line = line[:STATUS_DESCRIPTION_CHARS - 1] + "…"
    return line


def annotation(record: RolloutRecord, model: str) -> str:
    """The workflow command that annotates the run: ``::error`` for a rollback or abort,
    ``::notice`` for a promotion, ``::warning`` for a rollout that has not ended."""
    phase = record.state.phase
    _, words = outcome_of(record.state)
    title = f"kpigate: {model} {words} at {record.final_stage}"
    reason = record.state.reason or "no reason recorded"
    if phase in ROLLBACK_PHASES:
        return workflow_command("error", reason, title=title)
    if phase is Phase.PROMOTED:
        return workflow_command("notice", reason, title=title)
    return workflow_command("warning", reason, title=title)

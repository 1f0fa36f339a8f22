"""The exit codes of kpigate's commands, and how a rollout's outcome maps onto them.

One table for every command that waits for a rollout or reports one:
``mlflow deployments create|update|run-local -t kpigate … -C wait=true`` (the plugin),
``kpigate watch`` and the GitHub Action's steps (``kpigate github report``). A shell
script, a Kubernetes Job or a CI step can tell the outcome from the code alone:

====  ==============  =====================================================================
code  name            meaning
====  ==============  =====================================================================
0     ``PROMOTED``    the rollout was promoted (its bake, if any, ended without a regression)
1     ``ERROR``       kpigate could not do what was asked (one ``Error:`` line says why)
2     ``USAGE``       bad input: an option, a ``-C`` key, a file (one line naming it)
3     ``ROLLED_BACK`` rolled back, by the gate or an operator, also after promotion (bake)
4     ``ABORTED``     aborted: deleted while it ran, or its router did not start
5     ``NOT_ENDED``   the wait stopped first (``-C wait_timeout``, ``watch --timeout``):
                      the rollout goes on (holding, in a stage, or baking)
====  ==============  =====================================================================

docs/deployment.md#exit-codes shows the same table; the GitHub Action's roll-out step
lists the outcome codes (3, 4, 5) in its shell script, checked against this module by
tests/test_exit_codes.py.
"""

from __future__ import annotations

from mlflow_kpigate.core.state import Phase

PROMOTED = 0
ERROR = 1
USAGE = 2
ROLLED_BACK = 3
ABORTED = 4
NOT_ENDED = 5

#: The codes that report a rollout's outcome (not an error of the command itself).
OUTCOME_CODES = (PROMOTED, ROLLED_BACK, ABORTED, NOT_ENDED)

_BY_PHASE = {Phase.PROMOTED: PROMOTED, Phase.ROLLED_BACK: ROLLED_BACK,
             Phase.ABORTED: ABORTED}


def exit_code_for(phase: Phase | str) -> int:
    """The exit code of a rollout in ``phase``: ``NOT_ENDED`` for any unfinished phase."""
    return _BY_PHASE.get(Phase(phase), NOT_ENDED)


def outcome_line(name: str, status: str, reason: str | None) -> str:
    """One line that says how rollout ``name`` ended (``status`` as the tag shows it), e.g.
    ``rollout of fraud rolled back: rollback: error_rate …``."""
    words = status.replace("_", " ")
    text = " ".join((reason or "").split())
    return f"rollout of {name} {words}" + (f": {text}" if text else "")

"""The live terminal view of a rollout: what ``kpigate watch``, ``kpigate status --watch``
and ``mlflow deployments create … -C wait=true`` draw while a rollout runs.

Two modules, rendering kept apart from I/O:

* :mod:`.view` (with :mod:`.progress`): pure functions from a rollout's state, its frozen
  policy and the time to a ``rich`` renderable — the stage ladder with the current stage
  highlighted, the traffic split, the stage's requirements seen against needed (requests,
  labelled samples, dwell time), the per-KPI evidence table and the time-to-decision
  forecast of the last decision;
* :mod:`.screen`: :class:`~.screen.LiveScreen`, which shows that view in place on a
  terminal (a ``rich`` ``Live``), prints event lines above it, and stops cleanly however
  the command ends. Whether to use it at all is :func:`~.screen.live_wanted`: only on a
  terminal; elsewhere (CI logs, Jobs, captured output) the commands print their plain
  lines as before.

A package of its own, below ``cli/`` and ``plugin.py`` (both draw it; neither may import
the other) and above ``deploy/`` (it reads nothing itself: callers hand it states).
"""

from mlflow_kpigate.console.screen import LiveScreen, live_wanted
from mlflow_kpigate.console.view import rollout_view

__all__ = ["LiveScreen", "live_wanted", "rollout_view"]

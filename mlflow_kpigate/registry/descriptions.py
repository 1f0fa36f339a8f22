"""The rollout's section in a model version's description, and links to the rollout run.

The MLflow UI renders a version's description as markdown at the top of its page, so the
outcome of a rollout is written there, between two HTML comments (:data:`BEGIN`,
:data:`END`) that the UI does not show. :func:`with_section` replaces that section in
place and keeps whatever the user wrote before and after it; a description without one
gets it appended after a blank line. Writing the same section twice leaves one section,
so the effect is safe to repeat. The section's text is made by the caller (the report
package); data in it is escaped there, so no tag or reason can forge a marker.

Links are relative UI routes (``#/experiments/<id>/runs/<run_id>``): the UI opens them on
the server that shows the page, whatever address the tracking client used (a proxy, an
internal name, credentials in the URI are never written into the description). They
carry :data:`~.runs.ML_WORKFLOW_QUERY` so MLflow 3.17's UI shows the run as a machine
learning run.
"""

from __future__ import annotations

import urllib.parse

from mlflow_kpigate.core.refs import ModelRef
from mlflow_kpigate.registry.errors import MlflowAccess
from mlflow_kpigate.registry.runs import ML_WORKFLOW_QUERY

#: The markers around kpigate's section of a version description.
BEGIN = "<!-- kpigate:rollout begin -->"
END = "<!-- kpigate:rollout end -->"
#: MLflow's limit on a model-version description (its database column).
MAX_DESCRIPTION = 5000


def _markers(text: str) -> tuple[int, int]:
    """Where the section's begin and end markers are in ``text`` (-1: not there)."""
    start = text.find(BEGIN)
    return start, text.find(END, start + len(BEGIN)) if start >= 0 else -1


def with_section(description: str | None, body: str) -> str:
    """``description`` with its kpigate section replaced by ``body`` (or appended)."""
    text = description or ""
    section = f"{BEGIN}\n{body.strip()}\n{END}"
    start, end = _markers(text)
    if start >= 0 and end >= 0:
        return text[:start] + section + text[end + len(END):]
    if start >= 0:  # a begin marker whose end someone deleted: the section runs to the end
        return text[:start] + section
    if not text.strip():
        return section
    return text.rstrip() + "\n\n" + section


def section_of(description: str | None) -> str | None:
    """The body of the kpigate section of ``description`` (None without one)."""
    text = description or ""
    start, end = _markers(text)
    if start < 0 or end < 0:
        return None
    return text[start + len(BEGIN):end].strip()


class VersionDescriptions(MlflowAccess):
    """Writing the rollout section of a version's description; UI links to a run."""

    def describe_version(self, ref: ModelRef, body: str) -> None:
        """Replace (or add) kpigate's section of ``ref``'s description with ``body``.

        The user's text is kept; when it and the section exceed MLflow's limit, the
        section's body is cut (never the user's text).
        """
        version = self._call(f"read {ref.label}", self.client.get_model_version, ref.name,
                             ref.version)
        current = str(getattr(version, "description", None) or "")
        new = with_section(current, body)
        if len(new) > MAX_DESCRIPTION:
            room = max(0, len(body) - (len(new) - MAX_DESCRIPTION) - 1)
            new = with_section(current, body[:room] + "…")
        if new == current:
            return
        self._call(f"update the description of {ref.label}", self.client.update_model_version,
                   ref.name, ref.version, description=new)

    def run_link(self, run_id: str, artifact: str | None = None) -> str:
        """The UI route of ``run_id`` (or of one of its ``artifact`` files), relative."""
        run = self._call(f"read run {run_id}", self.client.get_run, run_id)
        q = urllib.parse.quote
        route = f"#/experiments/{q(str(run.info.experiment_id), safe='')}/runs/{q(run_id, safe='')}"
        if artifact:
            route += "/artifacts/" + q(artifact.strip("/"))
        return f"{route}?{ML_WORKFLOW_QUERY}"

"""Model-version tags and registered-model aliases that kpigate writes.

The candidate carries the rollout's status (``kpigate.status``, ``.stage``, ``.decision``,
``.reason``, ``.rollout_run_id``, ``.updated_at``); a replaced baseline is tagged
``kpigate.superseded_by`` (cleared when that version is promoted again); promotion moves
an alias (``champion`` by default), and a rollback after promotion (during the bake)
moves it back.

MLflow's UI lists a version's tags sorted by key in a box a few rows high, so the six
``kpigate.*`` tags put ``status`` and ``updated_at`` out of sight below ``decision`` and a
long ``reason``. The one-line summary tag ``kpigate`` (:data:`SUMMARY_TAG`, e.g.
``promoted · 100% · 2026-05-01T12:00:00Z``) sorts before all of them and says it at a
glance; the separate tags stay for the GitHub Action, scripts and searches.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone

from mlflow_kpigate.core.errors import UsageError
from mlflow_kpigate.core.refs import ModelRef
from mlflow_kpigate.registry.errors import MlflowAccess
from mlflow_kpigate.registry.limits import truncate

#: Tag prefix of everything kpigate writes.
TAG_PREFIX = "kpigate."
#: On a replaced baseline: the version that replaced it (removed when it is promoted again).
SUPERSEDED_BY = "kpigate.superseded_by"
#: The one-line summary tag: status · stage · time (sorts first in the UI's tag box).
SUMMARY_TAG = "kpigate"


def summary_line(*parts: str) -> str:
    """The :data:`SUMMARY_TAG` value: the non-empty ``parts`` joined by `` · ``."""
    return " · ".join(p for p in parts if p)


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


class TagsAndAliases(MlflowAccess):
    """Writing ``kpigate.*`` model-version tags and moving aliases."""

    def set_tags(self, ref: ModelRef, tags: Mapping[str, str]) -> None:
        """Set model-version tags (values cut to :data:`MAX_TAG_VALUE` characters)."""
        for key, value in tags.items():
            self._call(f"set tag {key!r} on {ref.label}", self.client.set_model_version_tag,
                       ref.name, ref.version, key, truncate("" if value is None else value))

    def status_tags(self, ref: ModelRef, *, status: str, stage: str, decision: str,
                    reason: str, rollout_run_id: str | None) -> None:
        """Write the rollout's ``kpigate.*`` status tags on ``ref`` (the candidate)."""
        now = _utc_now()
        self.set_tags(ref, {
            SUMMARY_TAG: summary_line(status, stage, now),
            "kpigate.status": status,
            "kpigate.stage": stage,
            "kpigate.decision": decision,
            "kpigate.reason": reason,
            "kpigate.rollout_run_id": rollout_run_id or "",
            "kpigate.updated_at": now,
        })

    def mark_superseded(self, baseline: ModelRef, by: ModelRef) -> None:
        """Tag the old baseline as superseded by ``by``."""
        now = _utc_now()
        self.set_tags(baseline, {
            SUMMARY_TAG: summary_line("superseded", f"by v{by.version}", now),
            SUPERSEDED_BY: by.label,
            "kpigate.status": "superseded",
            "kpigate.updated_at": now,
        })

    def clear_superseded(self, ref: ModelRef) -> None:
        """Remove ``kpigate.superseded_by`` from ``ref`` if it is there: a version promoted
        again is no longer superseded (its ``kpigate.status`` is rewritten anyway)."""
        version = self._call(f"read {ref.label}", self.client.get_model_version, ref.name,
                             ref.version)
        if SUPERSEDED_BY in (getattr(version, "tags", None) or {}):
            self._call(f"delete tag {SUPERSEDED_BY!r} of {ref.label}",
                       self.client.delete_model_version_tag, ref.name, ref.version,
                       SUPERSEDED_BY)

    def alias_version(self, name: str, alias: str) -> str | None:
        """The version ``alias`` of ``name`` points at (None if the alias is not set)."""
        model = self._call(f"read registered model {name!r}", self.client.get_registered_model,
                           name, not_found=lambda: UsageError(
                               f"no registered model named {name!r} at {self.tracking_uri}"))
        version = dict(getattr(model, "aliases", None) or {}).get(alias)
        return None if version is None else str(version)

    def move_alias(self, name: str, alias: str, version: str) -> str | None:
        """Point ``alias`` of ``name`` at ``version``; return the version it pointed at."""
        previous = self.alias_version(name, alias)
        self._call(f"move alias {alias!r} of {name!r} to version {version}",
                   self.client.set_registered_model_alias, name, alias, str(version),
                   not_found=lambda: UsageError(
                       f"registered model {name!r} has no version {version}"))
        return None if previous is None else str(previous)

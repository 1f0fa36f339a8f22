"""A resolved registered model version, as the registry hands it to the other parts."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelRef:
    """A resolved registered model version.

    ``uri`` is the canonical ``models:/NAME/VERSION``; ``source`` the version's source as
    the registry stores it (``models:/m-…`` in MLflow 3, ``runs:/…`` or a path before);
    ``storage_uri`` the artifact location the model files really live at.
    """

    name: str
    version: str
    uri: str
    run_id: str | None
    source: str
    storage_uri: str

    @property
    def label(self) -> str:
        """``NAME/VERSION``, as written into ``kpigate.superseded_by``."""
        return f"{self.name}/{self.version}"

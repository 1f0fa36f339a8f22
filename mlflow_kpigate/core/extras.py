"""The distribution's optional extras, and the check a command makes before it needs one.

``pip install mlflow-kpigate`` is the embedded target on one machine; the ``seldon`` extra
(setup.py) adds the modules only the cluster path imports. A command that needs an extra
calls :func:`require` before it imports anything of that path, so a missing extra is one
usage line naming the extra and the pip command (exit 2), not an ``ImportError`` traceback
from deep inside the Kubernetes code.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from mlflow_kpigate.core.errors import UsageError

DISTRIBUTION = "mlflow-kpigate"


class MissingExtra(UsageError):
    """A command needs an extra that is not installed (a usage error: exit code 2)."""


@dataclass(frozen=True)
class Extra:
    """An extra of the distribution: its name and the top-level modules it installs."""

    name: str
    modules: tuple[str, ...]

    def missing(self) -> tuple[str, ...]:
        """The extra's modules this interpreter cannot import (found without importing)."""
        return tuple(module for module in self.modules
                     if importlib.util.find_spec(module) is None)


#: -t kpigate:/seldon/NAMESPACE, ``kpigate operator``: the Kubernetes client, and the
#: Prometheus query client a cluster rollout reads its KPIs with.
SELDON = Extra("seldon", ("kubernetes", "prometheus_api_client"))


def require(extra: Extra, what: str) -> None:
    """Raise a one-line :class:`MissingExtra` when ``extra`` is not installed; ``what``
    names the option or command that needs it (``-t kpigate:/seldon/NS``, ``kpigate
    operator``)."""
    missing = extra.missing()
    if missing:
        raise MissingExtra(f"{what} needs the '{extra.name}' extra ({', '.join(missing)} "
                           f"not installed): pip install '{DISTRIBUTION}[{extra.name}]'")

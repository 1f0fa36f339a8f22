"""The ``kpigate`` command line (console script ``kpigate``, ``python -m mlflow_kpigate.cli``).

Thin, like ``plugin.py``: each command parses its options, calls a Deployer
(:mod:`mlflow_kpigate.deploy`) or a part, and prints. :mod:`.main` holds the group,
:mod:`.errors` turns user errors into a message and an exit code (2 for usage errors).
"""

from mlflow_kpigate.cli.errors import KpigateGroup, error_lines, fail, handle_errors
from mlflow_kpigate.cli.main import main

__all__ = ["KpigateGroup", "error_lines", "fail", "handle_errors", "main"]

"""``python -m mlflow_kpigate.cli``: the ``kpigate`` command."""

from mlflow_kpigate.cli.main import main

main(prog_name="kpigate")

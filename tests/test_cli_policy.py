"""``kpigate policy validate`` run as a real process: exit codes and messages."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from mlflow_kpigate import __version__
from mlflow_kpigate.cli import KpigateGroup, handle_errors
from mlflow_kpigate.core.errors import KpigateError, PolicyError, UsageError

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "policies"

INVALID = """\
stages: [shadow, 25, 5]
kpis:
  - name: precision
    kind: proportion
    metric: precison
    margin: 0.02
  - name: latency
    kind: quantile
    q: 95
    margin: 10%
"""


def kpigate(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mlflow_kpigate.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def invalid(tmp_path: Path) -> Path:
    path = tmp_path / "invalid.yaml"
    path.write_text(INVALID)
    return path


def test_valid_policy_prints_summary() -> None:
    path = EXAMPLES / "fraud.yaml"
    result = kpigate("policy", "validate", path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"{path}: ok (5 stages, 6 KPIs)"
    assert "shadow -> 5% -> 25% -> 50% -> 100%" in result.stdout
    assert "latency_p95" in result.stdout
    assert "promote within 3x margin" in result.stdout
    assert "control limits: k = 2" in result.stdout
    assert result.stderr == ""


def test_quiet_prints_only_ok_lines() -> None:
    files = [EXAMPLES / "fraud.yaml", EXAMPLES / "minimal.yaml"]
    result = kpigate("policy", "validate", "--quiet", *files)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"{files[0]}: ok (5 stages, 6 KPIs)",
        f"{files[1]}: ok (5 stages, 2 KPIs)",
    ]


def test_invalid_policy_lists_every_problem(invalid: Path) -> None:
    result = kpigate("policy", "validate", invalid)
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert f"{invalid}: stages[2].traffic: must be greater than the previous stage's 25; " \
           "traffic only increases during a rollout" in lines
    assert f"{invalid}: stages[2]: the last stage must be traffic: 100 (full rollout)" in lines
    assert any(line.startswith(f"{invalid}: kpis[0].metric: must be one of") and
               "Did you mean 'precision'?" in line for line in lines)
    assert f"{invalid}: kpis[1].q: must be < 1, got 95" in lines
    assert len(lines) == 4


def test_mixed_files_check_all_and_fail(invalid: Path, tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    good = EXAMPLES / "minimal.yaml"
    result = kpigate("policy", "validate", invalid, missing, good)
    assert result.returncode == 2
    assert f"{good}: ok (5 stages, 2 KPIs)" in result.stdout
    assert f"{missing}: file not found; check the path" in result.stderr
    assert result.stderr.splitlines()[-1] == "2 of 3 policy files are invalid"
    assert "Traceback" not in result.stderr


def test_yaml_syntax_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("stages: [shadow, 5, 100\nkpis: []\n")
    result = kpigate("policy", "validate", path)
    assert result.returncode == 2
    assert result.stderr.startswith(f"{path}: line ")
    assert "not valid YAML" in result.stderr
    assert "Traceback" not in result.stderr


def test_directory_argument(tmp_path: Path) -> None:
    result = kpigate("policy", "validate", tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == f"{tmp_path}: is a directory; give the policy YAML file"


def test_missing_argument_is_usage_error() -> None:
    result = kpigate("policy", "validate")
    assert result.returncode == 2
    assert "Missing argument" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_command_is_usage_error() -> None:
    result = kpigate("polcy")
    assert result.returncode == 2
    assert "No such command" in result.stderr


def test_version() -> None:
    result = kpigate("--version")
    assert result.returncode == 0
    # The plugin's version and the MLflow it runs with, read from MLflow's metadata.
    mlflow = importlib.metadata.version("mlflow")
    assert result.stdout == f"kpigate, version {__version__} (mlflow {mlflow})\n"


def test_help_lists_policy_group() -> None:
    result = kpigate("--help")
    assert result.returncode == 0
    assert "policy" in result.stdout


# --------------------------------------------------------------------------------------
# The shared error handling that later commands rely on (in-process)
# --------------------------------------------------------------------------------------


def test_group_turns_kpigate_errors_into_exit_codes() -> None:
    @click.group(cls=KpigateGroup)
    def root() -> None:
        pass

    @root.group()
    def sub() -> None:
        pass

    @root.command()
    def usage() -> None:
        raise UsageError("--stage must be one of shadow, 5, 25")

    @sub.command()
    def broken() -> None:
        raise KpigateError("the state store is locked by another controller")

    @sub.command()
    def policy() -> None:
        raise PolicyError(["kpis[2].margin: must be > 0, got 0", "stages: is required"], "p.yaml")

    assert isinstance(sub, KpigateGroup)
    runner = CliRunner()
    result = runner.invoke(root, ["usage"])
    assert (result.exit_code, result.output) == (
        2, "Error: --stage must be one of shadow, 5, 25\n")
    result = runner.invoke(root, ["sub", "broken"])
    assert result.exit_code == 1
    assert result.output == "Error: the state store is locked by another controller\n"
    result = runner.invoke(root, ["sub", "policy"])
    assert result.exit_code == 2
    assert result.output.splitlines() == [
        "p.yaml: kpis[2].margin: must be > 0, got 0", "p.yaml: stages: is required"]


def test_handle_errors_decorator() -> None:
    @handle_errors
    def helper(x: int) -> int:
        if x < 0:
            raise UsageError("x must be >= 0")
        return x

    assert helper(3) == 3
    with pytest.raises(click.exceptions.Exit) as info:
        helper(-1)
    assert info.value.exit_code == 2

"""Start-up: what `kpigate --version`, `--help` and completion import, that every listed
command resolves, and what the MLflow target adds to `mlflow deployments` (real processes)."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from mlflow_kpigate.cli.main import COMMANDS, main

HEAVY = ("scipy", "numpy", "pandas", "mlflow", "sklearn")

# Runs the real `kpigate` entry point in a fresh interpreter, then prints (on stderr, as
# the last line) the heavy top-level packages left in sys.modules.
_RUN = """
import atexit, json, runpy, sys
atexit.register(lambda: print(json.dumps(sorted(
    {{m.split(".")[0] for m in sys.modules}} & set({heavy!r}))), file=sys.stderr))
{pre}
sys.argv = ["kpigate", *{args!r}]
runpy.run_module("mlflow_kpigate.cli", run_name="__main__")
"""

# Loads every command into the group first: the listing then comes from the commands.
_LOAD_ALL = """
from mlflow_kpigate.cli.main import main
for name in main.list_commands(None):
    main.get_command(None, name)
"""


def kpigate(*args: str, pre: str = "", env: dict[str, str] | None = None
            ) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    code = _RUN.format(heavy=HEAVY, pre=pre, args=list(args))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "COLUMNS": "80", **(env or {})})
    heavy = json.loads(result.stderr.strip().splitlines()[-1])
    return result, heavy


@pytest.mark.parametrize("arg", ["--version", "--help", "-h"])
def test_version_and_help_import_no_heavy_module(arg):
    result, heavy = kpigate(arg)
    assert result.returncode == 0, result.stderr
    assert heavy == []


def test_help_lists_every_command_with_the_commands_own_short_help():
    lazy, heavy = kpigate("--help")
    loaded, _ = kpigate("--help", pre=_LOAD_ALL)
    assert heavy == []
    assert lazy.returncode == loaded.returncode == 0
    assert lazy.stdout == loaded.stdout
    rows = lazy.stdout.split("Commands:\n", 1)[1].splitlines()
    listed = [row.split()[0] for row in rows if row.startswith("  ") and row[2] != " "]
    assert listed == sorted(COMMANDS)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_stored_help_is_the_commands_first_paragraph(name):
    command = COMMANDS[name].load()
    assert command.name == name
    own = inspect.cleandoc(command.help or "").split("\n\n", 1)[0].replace("\n", " ")
    assert COMMANDS[name].help == own
    assert command.short_help is None  # else the listing would need it


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_listed_command_resolves(name):
    result = CliRunner().invoke(main, [name, "--help"], prog_name="kpigate")
    assert result.exit_code == 0, result.output
    assert f"Usage: kpigate {name} " in result.output


def test_every_listed_command_resolves_in_a_fresh_process():
    # One interpreter per command would take a minute; each command is run by the real
    # entry point after the previous ones, which is what a user's shell does too.
    code = ("from mlflow_kpigate.cli.main import COMMANDS, main\n"
            "for name in sorted(COMMANDS):\n"
            "    try:\n"
            "        main([name, '--help'], prog_name='kpigate')\n"
            "    except SystemExit as exc:\n"
            "        print('@@', name, exc.code)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    codes = dict(line.split()[1:] for line in result.stdout.splitlines()
                 if line.startswith("@@ "))
    assert codes == {name: "0" for name in COMMANDS}


def complete(words: str, cword: int) -> tuple[list[str], list[str]]:
    result, heavy = kpigate(env={"_KPIGATE_COMPLETE": "bash_complete", "COMP_WORDS": words,
                                 "COMP_CWORD": str(cword)})
    assert result.returncode == 0, result.stderr
    return result.stdout.split(), heavy


def test_completion_of_command_names_imports_nothing_heavy():
    items, heavy = complete("kpigate s", 1)
    assert items == ["plain,serve", "plain,simulate", "plain,status"]
    assert heavy == []
    items, _ = complete("kpigate --", 1)
    assert "plain,--version" in items


def test_completion_inside_a_command_loads_it():
    items, _ = complete("kpigate policy ", 2)
    assert items == ["plain,validate"]
    items, _ = complete("kpigate status --", 2)
    assert "plain,--state-dir" in items


def test_lazy_command_must_name_a_click_command():
    from mlflow_kpigate.cli.lazy import LazyCommand

    with pytest.raises(TypeError, match="not a click command"):
        LazyCommand("mlflow_kpigate.cli.main:COMMANDS", "x").load()
    assert isinstance(LazyCommand("mlflow_kpigate.cli.plan:plan_command", "x").load(),
                      click.Command)


def test_the_mlflow_target_adds_no_heavy_module_to_mlflow_deployments():
    # MLflow imports the plugin for every `mlflow deployments ... -t kpigate`; on top of
    # what MLflow itself imported, the plugin and the embedded Deployer (what `create`
    # runs) add kpigate's own modules only: no scipy.stats for the gate, nothing else.
    code = ("import json, sys\nimport mlflow.deployments.cli\nbefore = set(sys.modules)\n"
            "import mlflow_kpigate.plugin\n"
            "from mlflow_kpigate.deploy.targets import deployer_for\n"
            "deployer_for('kpigate')\n"
            "print(json.dumps(sorted(set(sys.modules) - before)))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    added = json.loads(result.stdout)
    assert "mlflow_kpigate.deploy.local" in added
    assert [m for m in added if m.split(".")[0] != "mlflow_kpigate"
            and m not in ("sqlite3", "sqlite3.dbapi2", "_sqlite3")] == []

"""The package's shape (DESIGN.md "Target layout"): small modules, each documented, and
every top-level part placed in the import contract that ``lint-imports`` checks."""

import ast
import configparser
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mlflow_kpigate"
CONTRACT = PACKAGE.parent / ".importlinter"
MAX_LINES = 400
MODULES = sorted(PACKAGE.rglob("*.py"))


def _name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_every_module_is_small_and_says_what_it_owns(path):
    lines = path.read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_LINES, f"{_name(path)} has {lines} lines; split it along its seams"
    if path.name != "__main__.py":
        assert ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))), \
            f"{_name(path)} has no module docstring saying what it owns"


def test_every_top_level_part_is_in_the_layer_contract():
    config = configparser.ConfigParser()
    config.read(CONTRACT)
    layers = config["importlinter:contract:layers"]["layers"]
    placed = {name.strip() for line in layers.splitlines()
              for name in line.replace(":", "|").split("|") if name.strip()}
    parts = {f"mlflow_kpigate.{p.stem if p.is_file() else p.name}"
             for p in PACKAGE.iterdir()
             if (p.is_dir() and (p / "__init__.py").exists())
             or (p.suffix == ".py" and p.name != "__init__.py")}
    assert parts - placed == set(), "place new parts in .importlinter's layers"
    assert placed - parts == set(), "the contract names parts that do not exist"

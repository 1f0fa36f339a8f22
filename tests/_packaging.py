"""Test helpers for the distribution: what setup.py declares (read from the metadata
setuptools writes, as pip would see it), what the package imports (read with ``ast``), and
which modules may need the ``seldon`` extra at import time; the GitHub Action's install
scripts, which tests/test_fresh_install.py runs.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mlflow_kpigate"
#: What scripts/build-image.sh copies to build the wheel (tests/test_k8s_examples.py
#: checks the script copies exactly these).
SOURCES = ("setup.py", "pyproject.toml", "README.md", "mlflow_kpigate")
#: The modules that need the seldon extra at import time: the cluster backend's parts that
#: talk to the API server, the Seldon deployer, the operator, the Prometheus source.
CLUSTER_ONLY = ("mlflow_kpigate.backends.seldon.", "mlflow_kpigate.deploy.seldon",
                "mlflow_kpigate.deploy.operator", "mlflow_kpigate.metrics.prometheus")


@dataclass(frozen=True)
class Declared:
    """setup.py's metadata: version, base requirements and extras, by canonical name."""

    version: str
    base: frozenset[str]
    extras: dict[str, frozenset[str]]


def declared(egg_base: Path) -> Declared:
    """Run setup.py's ``egg_info`` into ``egg_base`` and read what it declares."""
    result = subprocess.run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base",
                             str(egg_base)], cwd=ROOT, capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    info = egg_base / "mlflow_kpigate.egg-info"
    version = re.search(r"^Version: (.+)$", (info / "PKG-INFO").read_text(), re.MULTILINE)
    assert version is not None
    sections: dict[str, set[str]] = defaultdict(set)
    section = ""
    for line in (info / "requires.txt").read_text().splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif line.strip():
            sections[section].add(canonicalize_name(Requirement(line).name))
    base = frozenset(sections.pop("", set()))
    return Declared(version.group(1), base, {k: frozenset(v) for k, v in sections.items()})


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def third_party_imports() -> dict[str, set[str]]:
    """Top-level third-party module → the package's modules that import it (anywhere in
    the module: at the top, in a function, under TYPE_CHECKING)."""
    found: dict[str, set[str]] = defaultdict(set)
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "mlflow_kpigate":
                    found[top].add(module_name(path))
    return dict(found)


def action_step_script(step_id: str) -> str:
    """The ``run:`` script of the step ``step_id`` of the GitHub Action (action/action.yml)."""
    action = yaml.safe_load((ROOT / "action" / "action.yml").read_text(encoding="utf-8"))
    (script,) = [step["run"] for step in action["runs"]["steps"] if step.get("id") == step_id]
    return str(script)

"""How the GitHub Action is versioned and installed: the release workflow's steps, run for
real with bash and git (a bare repository stands in for GitHub), the Action's pip cache
key, and the ``@v0`` references users copy.

The workflow files themselves are validated and linted with the others by
tests/test_github_action.py (check-jsonschema, actionlint, SHA pins); the Action's install
step runs in tests/test_fresh_install.py.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlflow_kpigate import __version__

ROOT = Path(__file__).resolve().parents[1]
ACTION = ROOT / "action" / "action.yml"
RELEASE = ROOT / ".github" / "workflows" / "release.yml"
#: A ceiling for a wedged tool, not a performance threshold.
TOOL_LIMIT_S = 120
#: Where users read how to reference the Action.
USER_DOCS = [ROOT / "README.md", ROOT / "action" / "README.md",
             *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "examples").rglob("*.md")),
             *sorted((ROOT / "examples" / "github").glob("*.yml"))]
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com",
           "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}


def _steps(path: Path) -> dict[str, dict[str, Any]]:
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    steps = doc["runs"]["steps"] if "runs" in doc else doc["jobs"]["release"]["steps"]
    return {s.get("id") or s.get("name") or s["uses"]: s for s in steps}


def _bash(script: str, cwd: Path, out: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """A workflow step's script, with $GITHUB_OUTPUT at ``out``."""
    out.write_text("")
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "PIP_"))}
    return subprocess.run(["bash", "-c", script], cwd=cwd, capture_output=True, text=True,
                          env={**keep, **GIT_ENV, "GITHUB_OUTPUT": str(out), **env},
                          timeout=TOOL_LIMIT_S, check=False)


def _outputs(out: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in out.read_text().splitlines())


# -- the release workflow ----------------------------------------------------------------------
def test_release_runs_on_a_version_tag_with_least_permissions():
    doc = yaml.safe_load(RELEASE.read_text(encoding="utf-8"))
    on = doc[True]  # PyYAML reads the key `on` as True
    assert on == {"push": {"tags": ["v[0-9]+.[0-9]+.[0-9]+"]}}
    assert doc["permissions"] == {"contents": "read"}
    assert doc["jobs"]["release"]["permissions"] == {"contents": "write"}
    steps = _steps(RELEASE)
    checkout = next(s for s in steps.values() if s.get("uses", "").startswith("actions/checkout@"))
    assert checkout["with"]["persist-credentials"] is False
    holders = sorted(name for name, step in steps.items()
                     if "github.token" in str(step.get("env", {})))
    assert holders == ["Draft the release", "major"]  # not the build, which runs pip
    draft = steps["Draft the release"]["run"]
    assert "gh release create" in draft
    for flag in ("--draft", "--verify-tag", "--generate-notes", "--notes-file", "dist/*"):
        assert flag in draft


def test_release_refuses_a_tag_that_is_not_the_package_version(tmp_path):
    script = _steps(RELEASE)["version"]["run"]
    ok = _bash(script, ROOT, tmp_path / "out", GITHUB_REF_NAME=f"v{__version__}")
    assert ok.returncode == 0, ok.stderr
    assert _outputs(tmp_path / "out") == {"version": __version__,
                                          "major": f"v{__version__.split('.')[0]}"}
    bad = _bash(script, ROOT, tmp_path / "out", GITHUB_REF_NAME="v9.9.9")
    assert bad.returncode == 1
    assert bad.stdout.strip() == (
        f"::error title=release::tag v9.9.9 is not the package's version v{__version__}; set "
        "__version__ in mlflow_kpigate/_version.py to 9.9.9, commit, and tag that commit")
    assert _outputs(tmp_path / "out") == {}


def _git(cwd: Path, *args: str) -> str:
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                            env={**os.environ, **GIT_ENV}, timeout=TOOL_LIMIT_S, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_release_moves_the_major_tag_to_the_highest_release_only(tmp_path):
    """v0.1.0, then v0.2.0 move v0; v0.1.1 (a patch to the older minor, pushed later)
    leaves it at v0.2.0; v1.0.0 starts v1. The push goes to a bare repository."""
    script = _steps(RELEASE)["major"]["run"]
    origin, work = tmp_path / "origin.git", tmp_path / "work"
    _git(tmp_path, "init", "-q", "--bare", str(origin))
    _git(tmp_path, "init", "-q", str(work))
    _git(work, "remote", "add", "origin", str(origin))
    commits = {}
    for tag in ("v0.1.0", "v0.2.0", "v0.1.1", "v1.0.0"):
        _git(work, "commit", "-q", "--allow-empty", "-m", tag)
        _git(work, "tag", "-a", tag, "-m", tag)
        _git(work, "push", "-q", "origin", f"refs/tags/{tag}")
        commits[tag] = _git(work, "rev-parse", "HEAD")

        result = _bash(script, work, tmp_path / "out", GITHUB_REF_NAME=tag,
                       MAJOR=tag.split(".")[0], GH_TOKEN="not-used-by-a-local-remote")
        assert result.returncode == 0, result.stdout + result.stderr
        moved = _outputs(tmp_path / "out")["moved"]
        assert moved == ("false" if tag == "v0.1.1" else "true"), tag
        if tag == "v0.1.1":
            assert "::notice title=release::v0 stays at v0.2.0" in result.stdout
    remote = dict(line.split("\t")[::-1] for line in
                  _git(tmp_path, "ls-remote", "--tags", str(origin)).splitlines())
    assert remote["refs/tags/v0"] == commits["v0.2.0"]
    assert remote["refs/tags/v1"] == commits["v1.0.0"]


# -- the Action's pip cache ----------------------------------------------------------------------
def _pip_cache_outputs(root: Path, out: Path, **env: str) -> dict[str, str]:
    """Run the action's Pip cache key step on the checkout ``root``; its outputs."""
    result = _bash(_steps(ACTION)["pip-cache"]["run"], root, out,
                   GITHUB_ACTION_PATH=str(root / "action"), KPIGATE_PYTHON=sys.executable,
                   RUNNER_OS="Linux", RUNNER_ARCH="X64", **env)
    assert result.returncode == 0, result.stderr
    return _outputs(out)


def test_pip_cache_key_follows_the_requirements_and_the_constraints(tmp_path):
    pip_dir = subprocess.run([sys.executable, "-m", "pip", "cache", "dir"], capture_output=True,
                             text=True, timeout=TOOL_LIMIT_S, check=True,
                             env={k: v for k, v in os.environ.items()
                                  if not k.startswith("PIP_")}).stdout.strip()
    here = _pip_cache_outputs(ROOT, tmp_path / "out")
    assert here["dir"] == pip_dir
    python = "{}.{}".format(*sys.version_info[:2])
    assert here["restore-key"] == f"kpigate-pip-Linux-X64-py{python}-"
    assert re.fullmatch(re.escape(here["restore-key"]) + "[0-9a-f]{20}", here["key"])
    copy = tmp_path / "copy"
    for name in ("setup.py", "pyproject.toml", "mlflow_kpigate/_version.py",
                 "scripts/constraints.txt"):
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, copy / name)
    (copy / "action").mkdir()
    assert _pip_cache_outputs(copy, tmp_path / "out") == here
    with (copy / "scripts" / "constraints.txt").open("a") as constraints:
        constraints.write("numpy<3\n")
    changed = _pip_cache_outputs(copy, tmp_path / "out")
    assert changed["key"] != here["key"]
    assert changed["restore-key"] == here["restore-key"]
    # pip's cache turned off: no directory, so the cache step is skipped.
    assert _pip_cache_outputs(copy, tmp_path / "out", PIP_NO_CACHE_DIR="1")["dir"] == ""


# -- what users copy -------------------------------------------------------------------------------
@pytest.mark.parametrize("path", USER_DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_users_are_shown_the_major_tag_or_a_commit(path):
    refs = re.findall(r"mlflow-kpigate/action@([\w.-]+)", path.read_text(encoding="utf-8"))
    for ref in refs:
        assert ref == "v0" or re.fullmatch(r"[0-9a-f]{40}", ref), f"{path}: action@{ref}"


def test_the_docs_say_how_long_a_job_may_wait():
    text = (ROOT / "docs" / "github-action.md").read_text(encoding="utf-8")
    section = text.partition("\n## Long rollouts")[2].partition("\n## ")[0]
    for needle in ("6 hours", "5 days", "attach: true", "self-hosted", "workflow_dispatch",
                   "examples/policies/fraud.yaml"):
        assert needle in section, needle

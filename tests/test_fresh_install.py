"""`pip install .` into a fresh virtualenv without extras: the plugin works on one machine
and a cluster target says, in one line, which extra it needs.

The fresh venv must not have the ``seldon`` extra (the Kubernetes and Prometheus query
clients), and installing MLflow and its ~150 dependencies into it from a package index or
a wheelhouse takes minutes. So the venv (``python -m venv --without-pip``) sees this
test's own venv through a *view*: a directory of symlinks to every entry of this venv's
site-packages except the ``seldon`` extra's distributions and kpigate itself, added by a
``.pth`` file. Building the view takes milliseconds; pip resolves kpigate's requirements
against it with ``--no-index``, so a base requirement that only the extra provides (say
``kubernetes`` back in install_requires) fails the install.

The install is the GitHub Action's own Install step (action/action.yml), run with bash on
a copy of the checkout: ``pip install -c scripts/constraints.txt <checkout>``, which builds
kpigate as any user's ``pip install .`` does, in an isolated build environment with the
tools pyproject.toml names (setuptools, wheel; downloaded first, the only step that needs
the package index). For a ``kpigate:/seldon/NS`` target the step asks for the ``seldon``
extra, which the view cannot provide: that install fails on ``kubernetes``. Then, in the
fresh venv, concurrently:

* every module of the package imports, except the cluster-only ones (which fail on the
  missing extra's modules, and on nothing else);
* ``mlflow deployments help -t kpigate`` (MLflow finds the plugin) and ``kpigate
  --version`` work;
* ``mlflow deployments create -t kpigate:/seldon/NS``, ``kpigate status -t
  kpigate:/seldon/NS`` and ``kpigate operator`` each stop with exit code 2 and one line
  naming the extra and the pip command, without a traceback.

One test function (the setup is shared; pytest-xdist would otherwise split the steps).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from _packaging import CLUSTER_ONLY, ROOT, SOURCES, action_step_script

from mlflow_kpigate.cli.main import version_line
from mlflow_kpigate.core.extras import SELDON

NEEDS_EXTRA = ("needs the 'seldon' extra (kubernetes, prometheus_api_client not installed): "
               "pip install 'mlflow-kpigate[seldon]'")
#: Ceilings for a wedged pip or interpreter, not performance thresholds.
PIP_CEILING_S = 600
RUN_CEILING_S = 180

#: Run in the fresh venv: which modules import, and which fail on what; then, as MLflow is
#: imported by then, ``mlflow deployments help -t kpigate`` through MLflow's own CLI
#: (in-process: a help text needs no process of its own).
IMPORT_EVERY_MODULE = """
import importlib, importlib.util, json, pkgutil, sys
import mlflow_kpigate
failed = {}
for info in pkgutil.walk_packages(mlflow_kpigate.__path__, "mlflow_kpigate."):
    if info.name.endswith(".__main__"):  # runs the CLI
        continue
    try:
        importlib.import_module(info.name)
    except ImportError as exc:
        failed[info.name] = exc.name or str(exc)
from click.testing import CliRunner
from mlflow.cli import cli
result = CliRunner().invoke(cli, ["deployments", "help", "-t", "kpigate"])
print(json.dumps({"failed": failed, "file": mlflow_kpigate.__file__,
                  "found": [m for m in sys.argv[1:] if importlib.util.find_spec(m)],
                  "help": [result.exit_code, result.output]}))
"""


def _hidden_entries(site: Path) -> set[str]:
    """The site-packages entries of kpigate and of the seldon extra's distributions."""
    distributions = importlib.metadata.packages_distributions()
    names = {"mlflow-kpigate", *(d for module in SELDON.modules
                                 for d in distributions.get(module, []))}
    hidden = set()
    for name in names:
        try:
            files = importlib.metadata.distribution(name).files or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for file in files:
            if not file.parts or file.parts[0] == "..":  # scripts outside site-packages
                continue
            hidden.add(file.parts[0])
    return {entry for entry in hidden if (site / entry).exists() or (site / entry).is_symlink()}


def _view(site: Path, view: Path) -> set[str]:
    """``view``: symlinks to ``site``'s entries but the hidden ones; returns those."""
    hidden = _hidden_entries(site)
    assert {"kubernetes", "prometheus_api_client"} <= hidden, hidden
    view.mkdir()
    for entry in site.iterdir():
        if entry.name not in hidden and entry.name != "__pycache__":
            (view / entry.name).symlink_to(entry)
    return hidden


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    """The environment of a user's shell: nothing pointing at this checkout or this venv."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("PYTHON", "PIP_", "MLFLOW_", "KPIGATE_", "VIRTUAL_ENV"))}
    return {**env, "KPIGATE_STATE_DIR": str(tmp / "state"),
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}", **extra}


def _run(args: list[str], cwd: Path, env: dict[str, str],
         timeout: float = RUN_CEILING_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def _copy_checkout(src: Path) -> None:
    """What the package is built from, and the Action's files its install step reads."""
    for name in (*SOURCES, "action", "scripts/constraints.txt"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, src / name)


def _fresh_venv(tmp: Path) -> tuple[Path, Path]:
    """A venv without pip that sees this venv's packages but kpigate and the seldon extra;
    returns (its python, its site-packages)."""
    venv = tmp / "venv"
    result = _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp, _env(tmp))
    assert result.returncode == 0, result.stderr
    python = venv / "bin" / "python"
    fresh_site = Path(_run([str(python), "-c", "import sysconfig; "
                           "print(sysconfig.get_paths()['purelib'])"], tmp, _env(tmp))
                      .stdout.strip())
    _view(Path(sysconfig.get_paths()["purelib"]), tmp / "view")
    (fresh_site / "_kpigate_test_view.pth").write_text(
        f"import site; site.addsitedir({str(tmp / 'view')!r})\n", encoding="utf-8")
    return python, fresh_site


def _build_tools(tmp: Path) -> Path:
    """setuptools and wheel (pyproject.toml's build requirements) from the package index the
    user's pip is set up for: the only step that needs the network."""
    tools = tmp / "tools"
    result = _run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
                   "-d", str(tools), "setuptools>=64", "wheel"], tmp,
                  {**_env(tmp), **{k: v for k, v in os.environ.items()
                                   if k.startswith("PIP_")}}, PIP_CEILING_S)
    assert result.returncode == 0, \
        f"downloading the build tools (setuptools, wheel) needs the package index: " \
        f"{result.stderr[-2000:]}"
    return tools


def _action_install(tmp: Path, src: Path, python: Path, tools: Path,
                    target: str) -> subprocess.CompletedProcess[str]:
    """The Action's Install step for ``target``, offline: no pip configuration of this
    machine's, no index; the build tools from ``tools``, the rest from the view."""
    env = _env(tmp, GITHUB_ACTION_PATH=str(src / "action"), KPIGATE_PYTHON=str(python),
               KPIGATE_TARGET=target, PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1",
               PIP_FIND_LINKS=str(tools))
    return _run(["bash", "-c", action_step_script("install")], tmp, env, PIP_CEILING_S)


def test_pip_install_without_extras_serves_the_local_target_and_names_the_seldon_extra(
        tmp_path):
    timings: dict[str, float] = {}
    started = time.monotonic()
    src = tmp_path / "src"
    _copy_checkout(src)
    python, fresh_site = _fresh_venv(tmp_path)
    timings["venv and view"] = time.monotonic() - started
    started = time.monotonic()
    tools = _build_tools(tmp_path)
    timings["build tools"] = time.monotonic() - started

    # The Action installs the seldon extra for a cluster target: here it is not to be had.
    started = time.monotonic()
    result = _action_install(tmp_path, src, python, tools, "kpigate:/seldon/models")
    assert result.returncode != 0
    assert "No matching distribution found for kubernetes" in result.stderr, result.stderr
    timings["install step, seldon target"] = time.monotonic() - started
    # ... and `pip install .` with the repository's constraints for the embedded one.
    started = time.monotonic()
    result = _action_install(tmp_path, src, python, tools, "kpigate")
    assert result.returncode == 0, f"pip install . exited {result.returncode}: " \
                                   f"{(result.stdout + result.stderr)[-3000:]}"
    timings["install step, kpigate target"] = time.monotonic() - started

    # The checks, concurrently (each is one interpreter importing MLflow or kpigate).
    started = time.monotonic()
    env = _env(tmp_path)
    kpigate = str(python.parent / "kpigate")
    commands = {
        "modules": [str(python), "-c", IMPORT_EVERY_MODULE, *SELDON.modules],
        "create": [str(python), "-m", "mlflow", "deployments", "create",
                   "-t", "kpigate:/seldon/models", "--name", "fraud",
                   "-m", "models:/fraud-detector/2"],
        "version": [kpigate, "--version"],
        "status": [kpigate, "status", "fraud", "-t", "kpigate:/seldon/models"],
        "operator": [kpigate, "operator", "--namespace", "models"],
    }
    processes = {name: subprocess.Popen(args, cwd=tmp_path, env=env, text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for name, args in commands.items()}
    out: dict[str, tuple[int, str, str]] = {}
    try:
        for name, process in processes.items():
            stdout, stderr = process.communicate(timeout=RUN_CEILING_S)
            out[name] = (process.returncode, stdout, stderr)
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    timings["checks"] = time.monotonic() - started
    print("fresh install: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))

    code, stdout, stderr = out["modules"]
    assert code == 0, stderr[-3000:]
    report = json.loads(stdout)
    assert report["found"] == [], f"the fresh venv has the seldon extra: {report['found']}"
    assert report["file"].startswith(str(fresh_site)), report["file"]  # not the checkout
    assert report["failed"], "no module needs the seldon extra: is the view hiding it?"
    for module, missing in report["failed"].items():
        assert module.startswith(CLUSTER_ONLY), f"{module} needs {missing} at import time"
        assert missing.split(".")[0] in SELDON.modules, f"{module}: {missing}"
    assert "mlflow_kpigate.deploy.local" not in report["failed"]

    code, text = report["help"]
    assert code == 0, text[-3000:]
    assert "kpigate:/seldon/NAMESPACE" in text
    assert "candidate_timeout" in text
    code, stdout, stderr = out["version"]
    assert (code, stdout.strip()) == (0, version_line()), stderr  # the view's MLflow is ours

    for name, what in (("create", "-t kpigate:/seldon/models"),
                       ("status", "-t kpigate:/seldon/models"),
                       ("operator", "kpigate operator")):
        code, stdout, stderr = out[name]
        lines = stderr.strip().splitlines()
        assert code == 2, (name, stdout, stderr[-3000:])
        assert len(lines) == 1, (name, stderr[-3000:])
        assert lines[0] == f"Error: {what} {NEEDS_EXTRA}", name

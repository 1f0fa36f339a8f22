"""Shared fixtures: a real MLflow tracking server, local SQLite stores, registered models.

Fixtures
    ``mlflow_server`` (session): one real ``mlflow server`` (SQLite backend store, proxied
    artifacts in a temp directory, 127.0.0.1, a free port), started on first use, waited
    for by polling ``/health``, stopped at the end of the session. Yields ``MlflowServer``.
    ``mlflow_server_factory`` (function): starts extra short-lived servers (for tests that
    stop one); each is stopped at the test's end.
    ``server_tracking_uri`` / ``local_tracking_uri`` (function): set ``MLFLOW_TRACKING_URI``
    for one test, to the session server or to a fresh ``sqlite:///<tmp>/mlflow.db`` (the
    test then runs in that temp directory, so MLflow's default ``./mlruns`` artifact root
    lands there; the database is a copy of ``sqlite_store_template``, an empty store
    initialised once per session). ``tracking_uri`` is either, parametrised as ``server``
    and ``local``; restrict a test with ``@pytest.mark.parametrize("tracking_uri",
    ["local"], indirect=True)``.
    ``registered_model`` (function): a fresh registered scikit-learn model in the
    ``tracking_uri`` store with versions 1 and 2 and alias ``champion`` → 1. Yields
    ``RegisteredModel``.

Scheduling under pytest-xdist (``-n N``)
    Unless ``--dist`` is given, the suite runs with ``--dist loadfile``: each test module
    is one work unit, so a module-scoped setup (a registered model on the tracking server,
    routers, Prometheus) runs once, on one worker, instead of once per worker that happens
    to get some of its tests. Modules are handed out heaviest first (:data:`HEAVIEST_FIRST`,
    then the other modules with module-scoped fixtures, then the rest in collection order),
    so the long end-to-end modules do not start last and leave one worker running alone at
    the end. The order of tests within a module is unchanged; tests stay independent of
    where and in which order they run.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from processes import free_port, stop_process_group

#: Metrics logged on each version's training run, as values over steps 0, 1, …
#: (version 1's recall: one value per validation window).
TRAINING_METRICS: dict[str, dict[str, tuple[float, ...]]] = {
    "1": {"recall": (0.870, 0.880, 0.875, 0.872, 0.878), "val_precision": (0.918,),
          "prevalence": (0.015,)},
    "2": {"recall": (0.90,)},
}
_STARTUP_LIMIT_S = 180.0  # a ceiling for a wedged server, not a performance threshold

#: Test modules by the time their tests take (``--durations``, -n 2), longest first; the
#: rest follow (modules with module-scoped fixtures first). Only the order in which xdist
#: hands out work depends on it: a module missing here costs balance, never a test.
HEAVIEST_FIRST = (
    "test_image.py", "test_operator_e2e.py", "test_supervisor_healing.py",
    "test_cli_cluster.py", "test_github_action_attach.py", "test_shared_collector.py",
    "test_plugin.py", "test_exit_codes.py", "test_atomic_create.py",
    "test_router_processes.py", "test_candidate_process.py",
    "test_seldon_target.py", "test_forecast_accuracy.py", "test_github_action.py",
    "test_fraud_example.py", "test_router_isolation.py", "test_seldon_e2e.py",
    "test_benchmarks.py", "test_cli_simulate.py", "test_router.py",
)


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    """``-n N`` without ``--dist``: ``loadfile`` in the order the collection gives
    (pytest-xdist would otherwise pick ``load``; its ``loadgroup`` marks do not reach the
    test ids under pytest 9, and it would reorder files by their number of tests)."""
    option = config.option
    if getattr(option, "numprocesses", None) and getattr(option, "dist", None) == "no":
        option.dist = "loadfile"
        option.loadscopereorder = False


def _module_scoped(item: pytest.Item) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    defs = getattr(info, "name2fixturedefs", {}) or {}
    return any(d.scope == "module" for fixturedefs in defs.values() for d in fixturedefs)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Order the modules heaviest first (:data:`HEAVIEST_FIRST`, then those with
    module-scoped fixtures, then the rest); the order of tests within a module is kept."""
    rank = {name: i for i, name in enumerate(HEAVIEST_FIRST)}
    shared = {item.path.name for item in items if _module_scoped(item)}

    def key(item: pytest.Item) -> tuple[int, int]:
        name = item.path.name
        return (0, rank[name]) if name in rank else (1 if name in shared else 2, 0)

    items.sort(key=key)  # stable: collection order within equal keys


@dataclass
class MlflowServer:
    """A running ``mlflow server`` process."""

    uri: str
    port: int
    root: Path
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def running(self) -> bool:
        """True while the server process is alive."""
        return self.process.poll() is None

    def stop(self) -> None:
        """Stop the server and the processes it started (its own process group)."""
        stop_process_group(self.process)


def _healthy(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def start_mlflow_server(root: Path) -> MlflowServer:
    """Start ``mlflow server`` with its store and artifacts under ``root``; wait until healthy."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = root / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no background job workers
    cmd = [sys.executable, "-m", "mlflow", "server",
           "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
           "--artifacts-destination", str(root / "artifacts"),
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with log.open("wb") as out:
        process = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    server = MlflowServer(f"http://127.0.0.1:{port}", port, root, process, log)
    deadline = time.monotonic() + _STARTUP_LIMIT_S
    while not _healthy(server.uri):
        if not server.running:
            raise RuntimeError(f"mlflow server exited ({process.returncode}):\n"
                               + log.read_text(errors="replace")[-3000:])
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError("mlflow server did not become healthy:\n"
                               + log.read_text(errors="replace")[-3000:])
        time.sleep(0.2)
    return server


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """One real MLflow tracking server for the whole test session."""
    server = start_mlflow_server(tmp_path_factory.mktemp("mlflow-server"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def mlflow_server_factory(tmp_path_factory: pytest.TempPathFactory
                          ) -> Iterator[Callable[[], MlflowServer]]:
    """Start extra short-lived servers; all are stopped when the test ends."""
    started: list[MlflowServer] = []

    def start() -> MlflowServer:
        server = start_mlflow_server(tmp_path_factory.mktemp("mlflow-extra"))
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()


def _use_tracking_uri(uri: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Point MLflow at ``uri`` for one test: the env variable and MLflow's process-wide URI.

    ``mlflow.set_tracking_uri`` (which other code may have called) takes precedence over
    the environment, so both are set; afterwards the process-wide URI is cleared and
    ``monkeypatch`` restores the environment as it was.
    """
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    mlflow.set_tracking_uri(uri)
    try:
        yield uri
    finally:
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]  # None clears it


@pytest.fixture
def server_tracking_uri(mlflow_server: MlflowServer, monkeypatch: pytest.MonkeyPatch
                        ) -> Iterator[str]:
    """``MLFLOW_TRACKING_URI`` set to the session server for this test."""
    yield from _use_tracking_uri(mlflow_server.uri, monkeypatch)


@pytest.fixture(scope="session")
def sqlite_store_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An initialised, empty MLflow SQLite database, made once per session.

    Creating a store runs MLflow's schema migrations (over a second each time);
    ``local_tracking_uri`` copies this file instead.
    """
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("sqlite-template")
    db = root / "mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # MLflow resolves the default artifact root ./mlruns against cwd
        MlflowClient(f"sqlite:///{db}").search_experiments(max_results=1)
    return db


def _copy_store(template: Path, store: Path) -> None:
    """Copy the template database into ``store``; point the Default experiment there."""
    db = store / "mlflow.db"
    shutil.copyfile(template, db)
    try:
        with closing(sqlite3.connect(db)) as con, con:
            con.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
                        (str(store / "mlruns" / "0"),))
    except sqlite3.Error:  # a schema this helper does not know: let MLflow create a fresh one
        db.unlink()


@pytest.fixture
def local_tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                       sqlite_store_template: Path) -> Iterator[str]:
    """``MLFLOW_TRACKING_URI`` set to a fresh local SQLite store; cwd is its directory."""
    store = tmp_path / "local-store"
    store.mkdir()
    _copy_store(sqlite_store_template, store)
    monkeypatch.chdir(store)
    yield from _use_tracking_uri(f"sqlite:///{store / 'mlflow.db'}", monkeypatch)


@pytest.fixture(params=["server", "local"])
def tracking_uri(request: pytest.FixtureRequest) -> str:
    """The tracking URI of the store under test: the session server or a local SQLite one."""
    name = "server_tracking_uri" if request.param == "server" else "local_tracking_uri"
    return str(request.getfixturevalue(name))


@dataclass(frozen=True)
class RegisteredModel:
    """A registered model created for one test."""

    name: str
    tracking_uri: str
    versions: tuple[str, ...]
    run_ids: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, dict[str, tuple[float, ...]]] = field(default_factory=dict)
    alias: str = "champion"
    alias_version: str = "1"


def _train(seed: int, c: float) -> object:
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(200, 4))
    y = (x[:, 0] + 0.5 * x[:, 1] + rng.normal(scale=0.5, size=200) > 0).astype(int)
    return LogisticRegression(C=c).fit(x, y)


@pytest.fixture
def registered_model(tracking_uri: str) -> RegisteredModel:
    """A fresh sklearn model: version 1 (baseline, ``champion``) and version 2 (candidate).

    Each version's training run logs ``TRAINING_METRICS[version]`` (also in
    ``RegisteredModel.metrics``): version 1 ``recall`` at five steps, ``val_precision``
    and ``prevalence`` once; version 2 ``recall`` once.
    """
    import mlflow
    import mlflow.sklearn
    from mlflow import MlflowClient

    name = f"fraud-{uuid.uuid4().hex[:10]}"
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    experiment = client.create_experiment(f"train-{name}")
    run_ids: dict[str, str] = {}
    for version, seed, c in (("1", 1, 1.0), ("2", 2, 0.3)):
        with mlflow.start_run(experiment_id=experiment) as run:
            for key, values in TRAINING_METRICS[version].items():
                for step, value in enumerate(values):
                    mlflow.log_metric(key, value, step=step)
            info = mlflow.sklearn.log_model(_train(seed, c), name="model",
                                            registered_model_name=name,
                                            pip_requirements=["scikit-learn"])
            assert str(info.registered_model_version) == version
            run_ids[version] = run.info.run_id
    client.set_registered_model_alias(name, "champion", "1")
    return RegisteredModel(name, tracking_uri, ("1", "2"), run_ids, TRAINING_METRICS)


# -- a real Prometheus scraping a loopback exporter (tests/prometheus_fixture.py) ---------------
@pytest.fixture(scope="module")
def exporter() -> Iterator[Any]:
    """A loopback exporter whose series the test module sets."""
    from prometheus_fixture import LoopbackExporter

    with LoopbackExporter() as exp:
        yield exp


@pytest.fixture(scope="module")
def prometheus(exporter: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real Prometheus (Debian's binary) on 127.0.0.1 scraping ``exporter`` every second."""
    from prometheus_fixture import running_prometheus

    with running_prometheus([exporter.target], tmp_path_factory.mktemp("prom")) as prom:
        yield prom

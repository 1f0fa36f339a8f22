"""The router's processes under SIGKILL: no answered prediction is lost or counted twice.

The router's main process (``python -m mlflow_kpigate.backends.local.server``) runs two
workers on one port, each with its candidate process; 100 client threads send requests
with their own request ids while the test SIGKILLs, in turn, one candidate process, one
worker, and the main process (then starts it again, as the supervisor would). Afterwards
every
request answered with HTTP 200 must be in ``predictions.db`` exactly once as the row of
the model that answered it (``X-Kpigate-Role``), and nothing else may be there twice.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
import requests
from _router_fixtures import MODEL_NAME, Registry, make_frame, register_models
from processes import free_port

from mlflow_kpigate.backends.local.server import metrics_path
from mlflow_kpigate.backends.local.state_store import RolloutStore
from mlflow_kpigate.core.events import OtherEvent
from mlflow_kpigate.core.state import Phase, RolloutState, Weights

REPO = Path(__file__).resolve().parents[1]
CLIENTS = 100


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    import mlflow

    previous = mlflow.get_tracking_uri()
    try:
        yield register_models(tmp_path_factory.mktemp("mlflow"))
    finally:
        mlflow.set_tracking_uri(previous)


def _deployment(tmp_path: Path, registry: Registry, workers: int) -> tuple[Path, int]:
    directory = tmp_path / "dep"
    directory.mkdir()
    policy = directory / "policy.yaml"
    policy.write_text((REPO / "examples/policies/fraud.yaml").read_text())
    port = free_port()
    state = RolloutState(
        name="dur", model_name=MODEL_NAME, candidate_version="2", baseline_version="1",
        candidate_uri=registry.candidate_uri, baseline_uri=registry.baseline_uri,
        policy_file=str(policy), tracking_uri=registry.tracking_uri, port=port,
        stage_index=1, approved_stage_index=1, phase=Phase.CANARY, weights=Weights(50.0),
        workers=workers,
    )
    RolloutStore(directory).save(state, OtherEvent("started", {"stage": 1}))
    return directory, port


def _start(directory: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "mlflow_kpigate.backends.local.server", str(directory)],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 180  # bounds a wedged start only
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        with suppress(requests.RequestException):
            if requests.get(f"{url}/health", timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise AssertionError(f"router not healthy:\n{log.read_text()}")


def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the processes whose parent is ``pid``."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with suppress(OSError):
            stat = (entry / "stat").read_text()
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                out.append((int(entry.name), cmd))
    return out


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie is gone for our purpose (its parent, killed, will never reap it).
    with suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    return True


@contextmanager
def _load(url: str) -> Iterator[dict[str, str]]:
    """100 client threads sending until the block ends; yields {request id: role} of
    every request answered 200 (filled as they arrive)."""
    answered: dict[str, str] = {}
    lock = threading.Lock()
    stop = threading.Event()
    bodies = [make_frame(1, seed=i).to_json(orient="split", index=False) for i in range(50)]

    def client(i: int) -> None:
        session = requests.Session()
        n = 0
        while not stop.is_set():
            rid = f"c{i}-{n}-{uuid.uuid4().hex[:8]}"
            n += 1
            try:
                response = session.post(
                    f"{url}/invocations", data='{"dataframe_split": ' + bodies[n % 50] + "}",
                    headers={"Content-Type": "application/json", "X-Kpigate-Request-Id": rid,
                             "X-Kpigate-Routing-Key": f"user-{i}-{n % 7}"}, timeout=30)
            except requests.RequestException:
                session.close()
                session = requests.Session()
                # While the main process is down, 100 clients retrying every 0.05 s starve
                # the CPU its restart needs (20 s instead of 10 here); in-flight requests
                # at each kill are unaffected: the pause comes after a failed one.
                time.sleep(0.5)
                continue
            if response.status_code == 200:
                with lock:
                    answered[rid] = response.headers["X-Kpigate-Role"]
        session.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    try:
        yield answered
    finally:
        stop.set()
        for t in threads:
            t.join(60)


def _served_rows(db: Path) -> Counter[tuple[str, str]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT request_id, role, error FROM predictions WHERE shadow = 0")
        return Counter((rid, "candidate" if role else "baseline") for rid, role, error in rows
                       if not error)


def _kill(victim: str, process: subprocess.Popen[bytes]) -> list[int]:
    """SIGKILL the router's main process, or its first worker or candidate process;
    returns the pids of the main process's children at that moment."""
    deadline = time.monotonic() + 60  # an earlier victim is restarted after a backoff
    while True:
        children = _children(process.pid)
        workers = [pid for pid, cmd in children if "local.worker" in cmd]
        candidates = [pid for pid, cmd in children if "candidate_worker" in cmd]
        if len(workers) == 2 and len(candidates) == 2:
            break
        assert time.monotonic() < deadline, children
        time.sleep(0.1)
    target = {"router": process.pid, "worker": workers[0], "candidate": candidates[0]}
    os.kill(target[victim], signal.SIGKILL)
    return workers + candidates


def test_sigkill_of_any_router_process_loses_no_answered_prediction(
        tmp_path: Path, registry: Registry) -> None:
    directory, port = _deployment(tmp_path, registry, workers=2)
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "router.log"
    process = _start(directory, log)
    processes = [process]
    try:
        _wait_healthy(url, process, log)
        with _load(url) as answered:
            for victim in ("candidate", "worker", "router"):
                target = len(answered) + 300
                while len(answered) < target:  # under load when it dies
                    time.sleep(0.05)
                children = _kill(victim, process)
                if victim == "router":
                    process.wait(30)
                    deadline = time.monotonic() + 30
                    while not all(_gone(p) for p in children):
                        assert time.monotonic() < deadline, "children outlived the router"
                        time.sleep(0.1)
                    process = _start(directory, log)  # as the supervisor would
                    processes.append(process)
                    _wait_healthy(url, process, log)
            target = len(answered) + 300
            while len(answered) < target:  # serving again after the last kill
                time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        assert process.wait(90) == 0, log.read_text()[-3000:]
    finally:
        for p in processes:
            if p.poll() is None:
                with suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(30)
    rows = _served_rows(directory / "predictions.db")
    missing = [rid for rid, role in answered.items() if rows[(rid, role)] != 1]
    assert not missing, f"{len(missing)} of {len(answered)} answered predictions not " \
                        f"logged exactly once, e.g. {missing[:3]}"
    assert max(rows.values()) == 1
    assert Counter(answered.values())["candidate"] > 0
    assert not list((directory / "segments").glob("*.seg")), "segments left behind"
    text = log.read_text()
    assert "router worker 0 exited" in text or "router worker 1 exited" in text, text[-3000:]


def _metric_total(url: str, name: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(f"{url}/metrics", timeout=30).text
    return sum(sample.value for family in text_string_to_metric_families(text)
               for sample in family.samples if sample.name == name)


def test_two_workers_share_the_port_and_count_every_request_once(
        tmp_path: Path, registry: Registry) -> None:
    directory, port = _deployment(tmp_path, registry, workers=2)
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "router.log"
    process = _start(directory, log)
    try:
        _wait_healthy(url, process, log)
        roles: Counter[str] = Counter()
        bodies = [make_frame(1, seed=i).to_json(orient="split", index=False)
                  for i in range(8)]

        def client(i: int) -> None:
            # A new connection per request: the kernel spreads connections (not requests)
            # over the workers' sockets, and 400 of them cannot all land on one.
            for n in range(50):
                with requests.Session() as session:
                    response = session.post(
                        f"{url}/invocations", data='{"dataframe_split": ' + bodies[i] + "}",
                        headers={"Content-Type": "application/json",
                                 "X-Kpigate-Routing-Key": f"user-{i}-{n}"}, timeout=30)
                    assert response.status_code == 200
                    roles[response.headers["X-Kpigate-Role"]] += 1

        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        # Whichever worker answers the scrape, it adds up both workers' counts.
        totals = {_metric_total(url, "kpigate_requests_total") for _ in range(6)}
        assert totals == {400.0}
        # Both served: a worker's counter file appears with its first model call.
        assert len(list(metrics_path(directory).glob("counter_*.db"))) == 2
        process.send_signal(signal.SIGTERM)
        assert process.wait(90) == 0, log.read_text()[-3000:]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)
    rows = _served_rows(directory / "predictions.db")
    assert sum(rows.values()) == 400
    assert max(rows.values()) == 1
    assert Counter(role for _, role in rows.elements()) == roles


@contextmanager
def _tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700",
                              "tmpfs", str(path)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}); the in-process "
                    "fault test (tests/test_router_faults.py) still runs")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_a_full_disk_serves_the_baseline_unrecorded_and_recovers_when_space_returns(
        tmp_path: Path, registry: Registry) -> None:
    with _tmpfs(tmp_path / "disk", "8m") as disk:
        directory, port = _deployment(disk, registry, workers=1)
        url = f"http://127.0.0.1:{port}"
        log = tmp_path / "router.log"
        process = _start(directory, log)
        try:
            _wait_healthy(url, process, log)
            bodies = [make_frame(1, seed=i).to_json(orient="split", index=False)
                      for i in range(20)]

            def send(n: int) -> Counter[str]:
                roles: Counter[str] = Counter()
                with requests.Session() as session:
                    for i in range(n):
                        response = session.post(
                            f"{url}/invocations",
                            data='{"dataframe_split": ' + bodies[i % 20] + "}", timeout=30,
                            headers={"Content-Type": "application/json",
                                     "X-Kpigate-Routing-Key": f"user-{i}"})
                        assert response.status_code == 200, response.text
                        roles[response.headers["X-Kpigate-Role"]] += 1
                return roles

            assert send(60)["candidate"] > 0
            filler = disk / "filler"
            with filler.open("wb", buffering=0) as out:  # fill it to the last byte
                for chunk in (65536, 4096, 512, 1):
                    with suppress(OSError):
                        while True:
                            out.write(b"\0" * chunk)
            # The segment's last page still takes a few rows (recorded, rightly served by
            # either model); once an append fails, every answer is the baseline's.
            send(40)
            assert send(60) == Counter(baseline=60)
            assert requests.get(f"{url}/health", timeout=30).status_code == 503
            filler.unlink()  # space is back
            recovered = send(60)
            assert recovered["candidate"] > 0
            assert requests.get(f"{url}/health", timeout=30).status_code == 200
            process.send_signal(signal.SIGTERM)
            assert process.wait(90) == 0, log.read_text()[-3000:]
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(30)
        rows = _served_rows(directory / "predictions.db")
        assert sum(rows.values()) >= 120  # the healthy and the recovered requests
        assert sum(rows.values()) < 160  # not the ones answered on the full disk

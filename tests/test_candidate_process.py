"""The candidate in its own process: real workers, real models, real failures.

Each test starts the worker it needs through :class:`CandidateProcess` (the supervisor the
router uses) and stops it by pid at its end. Durations asserted here are timeouts as
correctness (an answer came within a timeout plus generous slack), never performance.
"""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow.pyfunc
import pytest
from _candidate_models import body, read_log, save_behaviour, save_sklearn, socket_dir, started

from mlflow_kpigate.backends.local.candidate_client import CandidateClient
from mlflow_kpigate.backends.local.candidate_process import ping
from mlflow_kpigate.backends.local.candidate_worker import EXIT_LOAD_FAILED
from mlflow_kpigate.backends.local.model_calls import input_schema
from mlflow_kpigate.backends.local.process_tie import EXIT_ORPHANED
from mlflow_kpigate.core.payloads import format_predictions, interpret_output, parse_payload

SLACK_S = 3.0  # scheduling on a shared 2-core machine; not a performance bound
EXITED = "candidate process exited during the request"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("candidate-models")
    return {"sklearn": save_sklearn(root / "sklearn"),
            "behaviour": save_behaviour(root / "behaviour")}


def _client(process, **options):
    settings = {"version": "7", "timeout_s": 10.0, "max_inflight": 4, **options}
    return CandidateClient(process.socket_path, **settings)


def _restart(process, deadline_s=60.0):
    """Call ``check`` as the router would until a restarted worker answers."""
    before = process.restarts
    deadline = time.monotonic() + deadline_s
    while process.restarts == before:
        assert time.monotonic() < deadline, "the worker was not restarted"
        process.check()
        time.sleep(0.1)
    assert process.wait_ready(120)


async def _until(condition, limit_s=30.0):
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)


def test_answers_are_what_the_model_gives_in_process(models, tmp_path):
    model = mlflow.pyfunc.load_model(str(models["sklearn"]))
    schema = input_schema(model)
    requests = [
        (json.dumps({"dataframe_split": {"columns": ["a", "b"], "data": [[0.3, -1.0]]}}),
         None),
        (json.dumps({"dataframe_records": [{"a": 1, "b": 2}, {"a": -3, "b": 0.5}]}),
         "application/json"),
        ("a,b\n0.5,0.5\n-1,-1\n2,0\n", "text/csv"),
    ]

    async def scenario(process):
        client = _client(process)
        attempts = [await client.score(text.encode(), ct, len(parse_payload(
            text.encode(), ct, schema).frame)) for text, ct in requests]
        assert await client.ping(5.0)
        await client.close()
        return attempts, client.counters

    with started(models["sklearn"], tmp_path) as process:
        attempts, counters = asyncio.run(scenario(process))
    for (text, ct), attempt in zip(requests, attempts, strict=True):
        frame = parse_payload(text.encode(), ct, schema).frame
        raw = model.predict(frame)
        assert attempt.error is None
        assert attempt.raw is None
        assert attempt.body == format_predictions(raw).encode()
        assert attempt.output == interpret_output(raw, len(frame), 0.5)
        assert (attempt.role, attempt.version, attempt.invalid_input) == ("candidate", "7",
                                                                          False)
        assert attempt.latency_s > 0
    assert counters["ok"] == 3


def test_rejected_unparseable_and_failing_inputs_are_errors(models, tmp_path):
    async def scenario(sklearn, behaviour):
        client, failing = _client(sklearn), _client(behaviour)
        missing = json.dumps({"dataframe_split": {"columns": ["a"], "data": [[1.0]]}})
        out = (await client.score(missing.encode(), None, 1),
               await client.score(b"{not json", None, 1),
               await failing.score(body("raise"), None, 1))
        await client.close()
        await failing.close()
        return out

    with started(models["sklearn"], tmp_path / "s") as sklearn, \
            started(models["behaviour"], tmp_path / "b") as behaviour:
        rejected, unparseable, raised = asyncio.run(scenario(sklearn, behaviour))
    assert rejected.invalid_input
    assert rejected.body is None
    assert rejected.error.startswith("input does not match the model's signature")
    assert rejected.output.scores == [None]
    assert not rejected.output.understood
    assert unparseable.invalid_input
    assert unparseable.error.startswith("the candidate could not parse the input: body is "
                                        "not valid JSON")
    assert raised.error == "ValueError: boom from the model"
    assert not raised.invalid_input


def test_a_timeout_discards_the_late_answer_and_the_next_request_works(models, tmp_path):
    async def scenario(process):
        client = _client(process, timeout_s=0.5)
        start = time.monotonic()
        late = await client.score(body("sleep", 2.0), None, 1)
        waited = time.monotonic() - start
        # After the sleeping predict's answer would have come: it must not be read here.
        await asyncio.sleep(2.0)
        fresh = await client.score(body("ok", rows=2), None, 2)
        await client.close()
        return late, waited, fresh, client.counters

    with started(models["behaviour"], tmp_path, threads=2) as process:
        late, waited, fresh, counters = asyncio.run(scenario(process))
    assert late.error == "timeout after 0.5 s"
    assert 0.5 <= waited < 0.5 + SLACK_S
    assert 0.5 <= late.latency_s < 0.5 + SLACK_S
    assert late.output.predicted == [None]
    assert late.body is None
    assert fresh.error is None
    assert fresh.body == b'{"predictions": [0.25, 0.25]}'
    assert counters["timeout"] == 1
    assert counters["ok"] == 1


def test_requests_beyond_the_cap_fail_at_once_and_pings_answer_while_predicts_hang(
        models, tmp_path):
    async def scenario(process):
        client = _client(process, max_inflight=2)
        stuck = [asyncio.create_task(client.score(body("sleep", 2.0), None, 1))
                 for _ in range(2)]
        await _until(lambda: client.inflight == 2)
        start = time.monotonic()
        busy = await client.score(body("ok"), None, 1)
        busy_waited = time.monotonic() - start
        # Both pool threads are inside predict: the worker's event loop still answers.
        pinged = await client.ping(1.0)
        blocking_ping = await asyncio.to_thread(ping, process.socket_path, 1.0)
        answers = await asyncio.gather(*stuck)
        await client.close()
        return busy, busy_waited, pinged, blocking_ping, answers, client.counters

    with started(models["behaviour"], tmp_path, threads=2) as process:
        busy, busy_waited, pinged, blocking_ping, answers, counters = asyncio.run(
            scenario(process))
    assert busy.error == "candidate busy: 2 requests in flight"
    assert busy_waited < 1.0
    assert busy.latency_s < 1.0
    assert pinged
    assert blocking_ping
    assert all(a.error is None for a in answers)
    assert counters["busy"] == 1
    assert counters["ok"] == 2


def test_a_killed_worker_is_unavailable_until_check_restarts_it(models, tmp_path, caplog):
    async def scenario(process):
        client = _client(process)
        assert (await client.score(body("ok"), None, 1)).error is None
        task = asyncio.create_task(client.score(body("sleep", 30.0), None, 1))
        await _until(lambda: client.inflight == 1)
        await asyncio.sleep(0.3)  # the request reached the worker
        os.kill(process.pid, signal.SIGKILL)
        during = await task
        # The kernel may close a dead process's listening socket a moment after the
        # connection: a request that connects in between is "exited" too.
        after = await client.score(body("ok"), None, 1)
        for _ in range(100):
            if after.error != EXITED:
                break
            await asyncio.sleep(0.05)
            after = await client.score(body("ok"), None, 1)
        await asyncio.to_thread(_restart, process)
        again = await client.score(body("ok"), None, 1)
        await client.close()
        return during, after, again

    with caplog.at_level("ERROR"), \
            started(models["behaviour"], tmp_path, threads=2) as process:
        first_pid = process.pid
        during, after, again = asyncio.run(scenario(process))
        assert process.restarts == 1
        assert process.pid != first_pid
    assert during.error == EXITED
    assert during.latency_s < 30
    assert after.error.startswith("candidate process unavailable: ")
    assert again.error is None
    assert again.body == b'{"predictions": [0.25]}'
    assert "exited with signal SIGKILL" in caplog.text


def test_a_model_that_exits_the_process_is_restarted(models, tmp_path, caplog):
    async def scenario(process):
        client = _client(process)
        crashed = await client.score(body("exit"), None, 1)
        await asyncio.to_thread(_restart, process)
        again = await client.score(body("ok"), None, 1)
        await client.close()
        return crashed, again

    with caplog.at_level("ERROR"), started(models["behaviour"], tmp_path) as process:
        crashed, again = asyncio.run(scenario(process))
    assert crashed.error == EXITED
    assert again.error is None
    assert "exited with code 1" in caplog.text


def test_the_watchdog_ends_a_worker_whose_predict_hangs(models, tmp_path, caplog):
    async def scenario(process):
        client = _client(process, timeout_s=60.0)
        start = time.monotonic()
        hung = await client.score(body("sleep", 60.0), None, 1)
        waited = time.monotonic() - start
        await asyncio.to_thread(_restart, process)
        again = await client.score(body("ok"), None, 1)
        await client.close()
        return hung, waited, again

    with caplog.at_level("ERROR"), \
            started(models["behaviour"], tmp_path, hang_after_s=1.0) as process:
        hung, waited, again = asyncio.run(scenario(process))
    assert hung.error == EXITED
    assert waited < 1.0 + SLACK_S + 1.0
    assert again.error is None
    assert "exited with code 70 (a predict hung)" in caplog.text
    assert "exiting so that the supervisor starts a fresh worker" in read_log(
        tmp_path / "worker.log")


def test_sigterm_lets_the_predict_in_flight_answer(models, tmp_path):
    async def scenario(process):
        client = _client(process)
        task = asyncio.create_task(client.score(body("sleep", 1.0), None, 1))
        await _until(lambda: client.inflight == 1)
        await asyncio.sleep(0.3)
        await asyncio.to_thread(process.stop, 30.0)
        answer = await task
        await client.close()
        return answer

    with started(models["behaviour"], tmp_path) as process:
        socket_path = Path(process.socket_path)
        answer = asyncio.run(scenario(process))
        assert process.pid is None
        assert not socket_path.exists()  # the worker removed its own socket
    assert answer.error is None
    assert "stopping: 1 requests in flight" in read_log(tmp_path / "worker.log")


def test_stopping_with_idle_pooled_connections_logs_no_traceback(models, tmp_path):
    async def scenario(process):
        client = _client(process)
        # Four calls at once leave four pooled connections open on the worker.
        await asyncio.gather(*[client.score(body("sleep", 0.2), None, 1) for _ in range(4)])
        await asyncio.to_thread(process.stop, 30.0)
        await client.close()

    with started(models["behaviour"], tmp_path) as process:
        asyncio.run(scenario(process))
    log = read_log(tmp_path / "worker.log")
    assert "stopping: 0 requests in flight" in log
    assert "Traceback" not in log


def _gone(pid):
    """Exited (a zombie counts: its parent, init, may reap it late)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def _worker_command(socket_path, model, tmp_path, parent_pid):
    return [sys.executable, "-m", "mlflow_kpigate.backends.local.candidate_worker",
            "--socket", str(socket_path), "--model-uri", str(model),
            "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--version", "7",
            "--threshold", "0.5", "--parent-pid", str(parent_pid)]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG")
def test_the_worker_dies_with_its_parent(models, tmp_path):
    with socket_dir() as sockets:
        sock = sockets / "cand.sock"
        spawn = ("import os, subprocess, sys; cmd = sys.argv[1:]; "
                 "cmd[cmd.index('PARENT')] = str(os.getpid()); "
                 "p = subprocess.Popen(cmd); print(p.pid, flush=True); p.wait()")
        parent = subprocess.Popen(
            [sys.executable, "-c", spawn,
             *_worker_command(sock, models["sklearn"], tmp_path, "PARENT")],
            stdout=subprocess.PIPE)
        worker = None
        try:
            worker = int(parent.stdout.readline())
            deadline = time.monotonic() + 180  # a ceiling for a wedged start
            while not ping(str(sock), 1.0):
                assert time.monotonic() < deadline
                assert not _gone(worker)
                time.sleep(0.1)
            parent.kill()
            parent.wait()
            deadline = time.monotonic() + 10
            while not _gone(worker):
                assert time.monotonic() < deadline, "the worker outlived its parent"
                time.sleep(0.05)
        finally:
            parent.kill()
            parent.wait()
            if worker is not None and not _gone(worker):
                os.kill(worker, signal.SIGKILL)


def test_a_worker_whose_parent_is_already_gone_exits_at_once(models, tmp_path):
    with socket_dir() as sockets:
        # Not our pid: as if the parent had died and the worker been re-parented.
        result = subprocess.run(
            _worker_command(sockets / "cand.sock", models["sklearn"], tmp_path,
                            os.getpid() + 1_000_000),
            capture_output=True, timeout=120)
        assert result.returncode == EXIT_ORPHANED
        assert b"is gone" in result.stderr
        assert not (sockets / "cand.sock").exists()


def test_a_second_worker_does_not_steal_a_live_workers_socket(models, tmp_path):
    with started(models["sklearn"], tmp_path) as process:
        result = subprocess.run(
            _worker_command(process.socket_path, models["sklearn"], tmp_path, os.getpid()),
            capture_output=True, timeout=120)
        assert result.returncode == EXIT_LOAD_FAILED
        assert b"another process is listening on" in result.stderr
        assert ping(process.socket_path, 5.0)

"""A damaged deployment state: one clear line for that deployment, never for the others.

Real files: a state directory with two deployments saved by the real RolloutStore, one of
them then overwritten with garbage; the real `kpigate` CLI in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlflow_kpigate.backends.local.state_store import RolloutStore
from mlflow_kpigate.core.errors import StateUnreadable
from mlflow_kpigate.core.events import OtherEvent
from mlflow_kpigate.core.state import Phase, RolloutState, Weights
from mlflow_kpigate.deploy.local import LocalDeployer

REPO = Path(__file__).resolve().parents[1]


def _save(root: Path, name: str) -> RolloutStore:
    store = RolloutStore(root / name)
    store.save(RolloutState(
        name=name, model_name="m", candidate_version="2", baseline_version="1",
        candidate_uri="models:/m/2", baseline_uri="models:/m/1",
        policy_file=str(REPO / "examples/policies/fraud.yaml"), tracking_uri="sqlite://",
        port=5001, stage_index=1, approved_stage_index=1, phase=Phase.CANARY,
        weights=Weights(5.0)), OtherEvent("started", {"stage": 1}))
    return store


def test_a_corrupt_state_is_one_line_for_it_and_the_others_still_list(tmp_path: Path
                                                                     ) -> None:
    _save(tmp_path, "alpha")
    _save(tmp_path, "beta")
    (tmp_path / "beta" / "state.db").write_bytes(b"not a database " * 100)
    for suffix in ("-wal", "-shm"):
        (tmp_path / "beta" / f"state.db{suffix}").unlink(missing_ok=True)
    deployer = LocalDeployer()
    listed = {d["name"]: d for d in deployer.list_all({"state_dir": str(tmp_path)})}
    assert listed["alpha"]["phase"] == "canary"
    assert listed["beta"]["status"] == "unreadable"
    assert "cannot be read" in listed["beta"]["error"]
    with pytest.raises(StateUnreadable, match="deployment 'beta' cannot be read"):
        deployer.describe("beta", {"state_dir": str(tmp_path)})
    result = subprocess.run(
        [sys.executable, "-m", "mlflow_kpigate.cli", "status", "beta", "--state-dir",
         str(tmp_path)], capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "cannot be read" in lines[0]


def test_a_torn_audit_line_is_cut_and_the_event_written_again_whole(tmp_path: Path
                                                                   ) -> None:
    store = _save(tmp_path, "gamma")
    store.append(OtherEvent("note", {"text": "x" * 200}))
    audit = store.audit_path
    whole = audit.read_bytes()
    audit.write_bytes(whole[:-40])  # a crash in the middle of writing the last event
    RolloutStore(tmp_path / "gamma").sync_audit_file()  # the next writer repairs it
    events = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [e["seq"] for e in events] == [1, 2]
    assert audit.read_bytes() == whole


def test_state_and_prediction_logs_are_private_to_the_user(tmp_path: Path) -> None:
    from mlflow_kpigate.kpis import AggregateSpec
    from mlflow_kpigate.metrics import Collector

    store = _save(tmp_path, "delta")
    with Collector(store.dir / "predictions.db", AggregateSpec()):
        pass
    assert store.dir.stat().st_mode & 0o777 == 0o700
    for name in ("state.db", "audit.jsonl", "predictions.db"):
        assert (store.dir / name).stat().st_mode & 0o777 == 0o600, name

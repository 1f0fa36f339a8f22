"""``stop_processes`` from the process that started the supervisor (the Python API's
``create`` then ``delete``, a benchmark): the supervisor is that process's child, so once it
exits on SIGTERM it is a zombie until reaped. ``stop_processes`` reaps it and returns, rather
than taking the zombie for a live supervisor for its whole 30 s grace period and then
sending SIGKILL to it.

A real child process stands in for the supervisor: it exits on SIGTERM after writing a
marker, as the supervisor does after stopping its router and controller.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from processes import stop_process_group, wait_for

from mlflow_kpigate.deploy.local_processes import stop_processes

STAND_IN = """
import signal, sys, time
from pathlib import Path

marker = Path(sys.argv[1])

def on_term(*_):
    marker.write_text("stopped by SIGTERM")
    sys.exit(0)

signal.signal(signal.SIGTERM, on_term)
marker.with_suffix(".ready").write_text("ready")
while True:
    time.sleep(0.05)
"""


def test_a_supervisor_that_is_our_child_is_reaped_once_it_exits_on_sigterm(tmp_path: Path
                                                                          ) -> None:
    marker = tmp_path / "stopped"
    child = subprocess.Popen([sys.executable, "-c", STAND_IN, str(marker)],
                             start_new_session=True)
    try:
        wait_for(marker.with_suffix(".ready").exists, "the stand-in's SIGTERM handler")
        (tmp_path / "pids.json").write_text(json.dumps({"supervisor": child.pid}))
        stop_processes(tmp_path)
        # Reaped here: no /proc entry left, not even a zombie's; and it ended by its own
        # SIGTERM handler, not by the SIGKILL sent to what outlives the grace period.
        assert not Path(f"/proc/{child.pid}").exists()
        assert marker.read_text() == "stopped by SIGTERM"
        assert not (tmp_path / "pids.json").exists()
    finally:
        stop_process_group(child)

"""The segment log across processes: concurrent ingesters, a SIGKILLed writer, a full disk.

Every other process is a real ``python -c`` child on the same directory and database; rows
are counted with SQL afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from mlflow_kpigate.kpis import AggregateSpec
from mlflow_kpigate.metrics import Collector

SPEC = AggregateSpec(segment_fields=("region",), value_names=("amount",))
ROOT = Path(__file__).resolve().parents[1]

# Appends COUNT batches of 1 + i % PER rows (ids NAME-i/j), printing i after each append
# returned, then sleeping PAUSE seconds.
APPENDER = """
import sys, time
from pathlib import Path
from mlflow_kpigate.core.records import Prediction
from mlflow_kpigate.metrics.segment_log import SegmentWriter

directory, name, count, per, max_bytes = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
pause = float(sys.argv[6])
features = {f"f{k}": k * 0.5 for k in range(40)}  # large batches span several pages
w = SegmentWriter(Path(directory), name, fsync="never", max_bytes=max_bytes)
i = 0
while count < 0 or i < count:
    w.append([Prediction(f"{name}-{i}/{j}", 1.7e9 + i, "baseline", "1", 0, False, 0.01,
                         False, 0.5, 1, {"region": "eu"}, features)
              for j in range(1 + i % per)])
    print(i, flush=True)
    time.sleep(pause)
    i += 1
w.close()
"""

# Ingests until the file DONE exists, then once more.
INGESTER = """
import sys
from pathlib import Path
from mlflow_kpigate.kpis import AggregateSpec
from mlflow_kpigate.metrics import Collector

db, directory, done = map(Path, sys.argv[1:4])
spec = AggregateSpec(segment_fields=("region",), value_names=("amount",))
with Collector(db, spec, segments=directory) as c:
    while not done.exists():
        c.ingest_segments()
    c.ingest_segments()
"""

# Fills a segment under a 16 KiB file-size limit until a big append fails (EFBIG).
FILLER = """
import json, os, resource, signal, sys
from pathlib import Path
from mlflow_kpigate.core.records import Prediction
from mlflow_kpigate.metrics import CollectorError, SegmentWriter

def rows(prefix, n):
    return [Prediction(f"{prefix}/{j}", 1.7e9, "baseline", "1", 0, False, 0.01, False, 0.5,
                       1, {"region": "eu"}) for j in range(n)]

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # so the write fails with EFBIG instead
limit = 16384
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
w = SegmentWriter(Path(sys.argv[1]), "w0", fsync="always")
ok, i = [], 0
while w.path.stat().st_size < limit - 3000:
    w.append(rows(f"s{i}", 1))
    ok.append(f"s{i}/0")
    i += 1
before = w.path.stat().st_size
try:
    w.append(rows("big", 60))
    error = None
except CollectorError as exc:
    error = str(exc)
after = w.path.stat().st_size
tail = open(w.path, "rb").read()[-1:]
failed_path = str(w.path)
w.append(rows("later", 2))
ok += ["later/0", "later/1"]
w.close()
print(json.dumps({"error": error, "before": before, "after": after, "tail": tail.decode(),
                  "ok": ok, "path": failed_path, "later_path": str(w.path)}))
"""


def python(code: str, *args: object, **kw: object) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
        [sys.executable, "-c", code, *map(str, args)], env=env, text=True, **kw
    )


def counts(db: Path) -> tuple[int, int, dict[str, int]]:
    with sqlite3.connect(db) as conn:
        total, distinct = conn.execute(
            "SELECT COUNT(*), COUNT(DISTINCT request_id) FROM predictions").fetchone()
        offsets = conn.execute("SELECT COUNT(*) FROM segment_offsets").fetchone()[0]
    return total, distinct, {"offset_rows": offsets}


def test_threads_and_processes_ingest_concurrently_each_row_once(tmp_path: Path) -> None:
    db, seg, done = tmp_path / "predictions.db", tmp_path / "seg", tmp_path / "done"
    collector = Collector(db, SPEC, segments=seg)  # creates the schema first
    ingesters = [python(INGESTER, db, seg, done) for _ in range(2)]
    stop = threading.Event()
    errors: list[BaseException] = []

    def ingest_until_stopped() -> None:
        try:
            while not stop.is_set():
                collector.ingest_segments()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=ingest_until_stopped) for _ in range(2)]
    for t in threads:
        t.start()
    batches, per = 300, 4
    appender = python(APPENDER, seg, "w0", batches, per, 20_000, 0.001,
                      stdout=subprocess.PIPE)
    out, _ = appender.communicate(timeout=120)
    assert appender.returncode == 0
    assert out.split()[-1] == str(batches - 1)
    done.touch()
    for p in ingesters:
        assert p.wait(timeout=120) == 0
    stop.set()
    for t in threads:
        t.join()
    assert errors == []
    collector.ingest_segments()
    collector.close()
    expected = sum(1 + i % per for i in range(batches))
    assert counts(db) == (expected, expected, {"offset_rows": 0})
    assert list(seg.glob("*.seg")) == []


def test_sigkilled_writer_loses_no_returned_append(tmp_path: Path) -> None:
    db, seg = tmp_path / "predictions.db", tmp_path / "seg"
    per = 20  # batches of up to 20 rows of ~700 bytes: several pages per write
    # At most ~500 batches a second, so it is killed in the middle of its run; bounded
    # (20000 batches) in case the test fails before killing it.
    writer = python(APPENDER, seg, "w0", 20_000, per, 64 * 2**20, 0.002,
                    stdout=subprocess.PIPE, start_new_session=True)
    assert writer.stdout is not None
    stdout = writer.stdout
    returned: list[int] = []
    # Drained on a thread, so the writer is busy appending (not blocked on the pipe)
    # when it is killed.
    reader = threading.Thread(target=lambda: returned.extend(int(x) for x in stdout))
    reader.start()

    def wait_for(n: int) -> None:
        deadline = time.monotonic() + 60
        while len(returned) < n:
            assert writer.poll() is None, "the writer ended early"
            assert time.monotonic() < deadline
            time.sleep(0.005)

    try:
        with Collector(db, SPEC, segments=seg) as collector:
            wait_for(100)
            assert collector.ingest_segments().rows > 0
            assert len(list(seg.glob("*.seg"))) == 1  # a live writer's file is kept
            wait_for(len(returned) + 100)
            os.kill(writer.pid, signal.SIGKILL)
            assert writer.wait(timeout=30) == -signal.SIGKILL
            reader.join()
            last = returned[-1]
            assert last < 19_999  # killed while appending
            result = collector.ingest_segments()
            assert result.segments_deleted == 1
            assert result.torn_lines <= 1
    finally:
        if writer.poll() is None:
            writer.kill()
    assert list(seg.glob("*.seg")) == []
    with sqlite3.connect(db) as conn:
        ids = [r for (r,) in conn.execute("SELECT request_id FROM predictions")]
    assert len(ids) == len(set(ids))
    per_batch = Counter(int(i.split("-")[1].split("/")[0]) for i in ids)
    # Every append that returned is in, complete; only the one in progress may be missing.
    assert set(range(last + 1)) <= set(per_batch) <= set(range(last + 2))
    assert all(n == 1 + i % per for i, n in per_batch.items())


def test_failed_write_is_cut_back_and_later_appends_work(tmp_path: Path) -> None:
    seg = tmp_path / "seg"
    filler = python(FILLER, seg, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = filler.communicate(timeout=60)
    assert filler.returncode == 0, err
    report = json.loads(out)
    error = report["error"]
    assert error is not None
    assert "\n" not in error
    assert "EFBIG" in error
    assert report["path"] in error
    assert report["after"] == report["before"]  # nothing of the failed append is left
    assert report["tail"] == "\n"
    assert report["later_path"] != report["path"]  # a failed append ends its segment
    with Collector(tmp_path / "predictions.db", SPEC, segments=seg) as collector:
        result = collector.ingest_segments()
        assert (result.rows, result.torn_lines, result.segments_deleted) == (
            len(report["ok"]), 0, 2)
        with sqlite3.connect(collector.db_path) as conn:
            ids = sorted(r for (r,) in conn.execute("SELECT request_id FROM predictions"))
    assert ids == sorted(report["ok"])


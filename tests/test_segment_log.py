"""The segment log: line format, SegmentWriter, ingesting into predictions.db, Collector wiring.

Real files, real SQLite, real flocks. Tests with other processes (concurrent ingesters,
a SIGKILLed writer, a file-size limit) are in ``test_segment_processes.py``.
"""

from __future__ import annotations

import fcntl
import os
import random
import sqlite3
import struct
import time
from pathlib import Path

import numpy as np
import pytest

from mlflow_kpigate.core.records import Label, Prediction
from mlflow_kpigate.kpis import AggregateSpec
from mlflow_kpigate.metrics import Collector, CollectorError, IngestLoop, SegmentWriter
from mlflow_kpigate.metrics.segment_format import decode_line, encode_predictions
from mlflow_kpigate.metrics.segment_log import FSYNC_POLICIES

SPEC = AggregateSpec(segment_fields=("region",), value_names=("amount",))
T0 = 1_700_000_000.0


def pred(request_id: str, **kw: object) -> Prediction:
    fields: dict[str, object] = dict(
        ts=T0, role="baseline", version="1", stage_index=0, shadow=False, latency_s=0.01,
        error=False, score=0.7, predicted=1, segments={"region": "eu"},
    )
    fields.update(kw)
    return Prediction(request_id, **fields)  # type: ignore[arg-type]


def batch(prefix: str, n: int) -> list[Prediction]:
    return [pred(f"{prefix}/{j}", score=j / (n + 1), ts=T0 + j) for j in range(n)]


def db_ids(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        return [r for (r,) in conn.execute("SELECT request_id FROM predictions")]


def seg_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.seg"))


@pytest.fixture
def collector(tmp_path: Path):
    with Collector(tmp_path / "predictions.db", SPEC, segments=tmp_path / "seg") as c:
        yield c


# -- the line format ------------------------------------------------------------------------


def bits(x: float) -> bytes:
    return struct.pack("<d", x)


def test_round_trip_of_every_field() -> None:
    rng = random.Random(1)
    rows = [
        pred("plain"),
        pred("nones", score=None, latency_s=None, predicted=None, error=True, segments={}),
        pred("unicodé/0", role="candidate", version="v2 ✓", stage_index=3, shadow=True,
             segments={"region": "Zürich — 東京 \n \"q\"", "other": None}),
        pred("int-ts", ts=1_700_000_000, predicted=0, score=0),
        pred("inf", score=float("inf")),
        pred("ninf", score=-float("inf"), features={}),
        pred("feat", features={"a": 1, "b": [1.5, None, "x"], "c": {"d": True}}),
    ]
    for i in range(200):  # random bit patterns: floats must come back bit for bit
        ts = struct.unpack("<d", struct.pack("<Q", rng.getrandbits(52) | (0x41D << 52)))[0]
        rows.append(pred(f"f{i}", ts=ts, score=rng.uniform(-1e300, 1e300),
                         latency_s=rng.random() * 10 ** rng.randint(-300, 3) or 1e-9))
    data = encode_predictions(rows)
    lines = data.split(b"\n")
    assert lines[-1] == b""
    assert len(lines) == len(rows) + 1
    for row, line in zip(rows, lines, strict=False):
        back = decode_line(line)
        assert back == row
        for name in ("ts", "score", "latency_s"):
            a, b = getattr(row, name), getattr(back, name)
            if isinstance(a, float):
                assert bits(a) == bits(b), name
            assert type(a) is type(b), name
    assert decode_line(lines[0] + b"\n") == rows[0]
    assert encode_predictions([]) == b""


def test_numpy_and_unencodable_values_become_plain_json() -> None:
    obj = object()
    row = pred(
        "np", ts=np.float64(T0 + 0.1), score=np.float32(0.1), latency_s=np.float64(0.02),
        stage_index=np.int64(2), predicted=np.int64(1), shadow=np.bool_(True),
        segments={"region": np.str_("eu")},
        features={"f32": np.float32(0.1), "i64": np.int64(-3), "b": np.bool_(False),
                  "arr": np.arange(3), "obj": obj, "nan": float("nan"), "big": 2**70,
                  7: "int key", "tuple": (1, 2)},
    )
    back = decode_line(encode_predictions([row]))
    assert bits(back.score) == bits(float(np.float32(0.1)))
    assert bits(back.ts) == bits(T0 + 0.1)
    assert back.stage_index == 2
    assert type(back.stage_index) is int
    assert back.shadow is True
    assert back.predicted == 1
    assert back.segments == {"region": "eu"}
    assert back.features == {
        "f32": float(np.float32(0.1)), "i64": -3, "b": False, "arr": [0, 1, 2],
        "obj": str(obj), "nan": "nan", "big": str(2**70), "7": "int key", "tuple": [1, 2],
    }


@pytest.mark.parametrize("line", [
    b"", b"not json", b"[1, 2]", b'{"v": 1}', b'{"v": 99, "request_id": "x"}',
    b'{"v":1,"request_id":"r","ts":1.0,"role":"boss","version":"1","stage_index":0,'
    b'"shadow":false,"latency_s":null,"error":false,"score":null,"predicted":null,'
    b'"segments":{},"features":null}',
    b'{"v":1,"request_id":"r","ts":1.0,"role":"baseline","version":"1","stage_index":0,'
    b'"shadow":0,"latency_s":null,"error":false,"score":"nan","predicted":null,'
    b'"segments":{},"features":null}',
    encode_predictions([pred("r")])[:-20],
])
def test_decode_refuses_malformed_lines(line: bytes) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 (each line fails for its own reason)
        decode_line(line)


# -- the writer ---------------------------------------------------------------------------


def test_writer_arguments_are_validated(tmp_path: Path) -> None:
    for kwargs, name in [
        ({"fsync": "sometimes"}, "fsync"), ({"fsync_interval_s": 0}, "fsync_interval_s"),
        ({"fsync_interval_s": float("nan")}, "fsync_interval_s"),
        ({"max_bytes": 0}, "max_bytes"), ({"max_bytes": True}, "max_bytes"),
    ]:
        with pytest.raises(ValueError, match=name):
            SegmentWriter(tmp_path, "w0", **kwargs)  # type: ignore[arg-type]
    for bad in ("", "w-0", ".w0", "a/b"):
        with pytest.raises(ValueError, match="writer"):
            SegmentWriter(tmp_path, bad)
    assert sorted(FSYNC_POLICIES) == ["always", "interval", "never"]
    assert seg_files(tmp_path) == []


@pytest.mark.parametrize("policy", ["never", "interval", "always"])
def test_each_fsync_policy_writes_rows_that_ingest_once(
    tmp_path: Path, collector: Collector, policy: str
) -> None:
    with SegmentWriter(tmp_path / "seg", "w0", fsync=policy, fsync_interval_s=0.05) as w:
        assert "process crash" in w.describe()
        w.append(batch("a", 3))
        time.sleep(0.12)  # the interval thread's flush runs meanwhile
        w.append(batch("b", 2))
        assert collector.ingest_segments().rows == 5
    w.close()  # idempotent
    with pytest.raises(CollectorError, match="closed"):
        w.append(batch("c", 1))
    assert collector.ingest_segments().segments_deleted == 1
    assert sorted(db_ids(collector.db_path)) == sorted(
        [f"a/{j}" for j in range(3)] + [f"b/{j}" for j in range(2)])


def test_segment_is_locked_private_and_named_in_order(tmp_path: Path) -> None:
    with SegmentWriter(tmp_path, "w0", max_bytes=1) as w:
        first = w.path
        assert first.stat().st_mode & 0o777 == 0o600
        fd = os.open(first, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
        w.append(batch("a", 1))
        w.append(batch("b", 1))  # rotates first: the old file is unlocked, not deleted
        assert w.path != first
        assert sorted([first, w.path]) == [first, w.path]
        fd = os.open(first, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    with pytest.raises(ValueError, match=r"predictions\[0\]"):
        SegmentWriter(tmp_path, "w1").append(["not a prediction"])  # type: ignore[list-item]


# -- ingesting ----------------------------------------------------------------------------


def test_append_then_ingest_every_row_exactly_once(tmp_path: Path, collector: Collector) -> None:
    w = SegmentWriter(tmp_path / "seg", "w0", fsync="never")
    expected = []
    for i in range(30):
        rows = batch(f"r{i}", 1 + i % 4)
        w.append(rows)
        expected += [r.request_id for r in rows]
        if i % 7 == 0:
            collector.ingest_segments()
    collector.ingest_segments()
    again = collector.ingest_segments()
    assert again.rows == 0
    assert again.segments_deleted == 0
    assert sorted(db_ids(collector.db_path)) == sorted(expected)
    assert seg_files(tmp_path / "seg") == [w.path]
    w.close()
    assert collector.ingest_segments().segments_deleted == 1
    assert seg_files(tmp_path / "seg") == []
    assert sorted(db_ids(collector.db_path)) == sorted(expected)
    with sqlite3.connect(collector.db_path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM segment_offsets").fetchone() == (0,)


def test_rotation_makes_several_segments_each_ingested_once(
    tmp_path: Path, collector: Collector
) -> None:
    w = SegmentWriter(tmp_path / "seg", "w0", fsync="never", max_bytes=1500)
    expected = []
    seen = set()
    for i in range(40):
        rows = batch(f"r{i}", 2)
        w.append(rows)
        seen.add(w.path)
        expected += [r.request_id for r in rows]
        if i % 10 == 9:
            collector.ingest_segments()
            assert seg_files(tmp_path / "seg") == [w.path]  # rotated ones are gone
    assert len(seen) >= 5
    w.close()
    collector.ingest_segments()
    assert seg_files(tmp_path / "seg") == []
    assert sorted(db_ids(collector.db_path)) == sorted(expected)


def test_dead_writers_torn_last_line_is_counted_and_dropped(
    tmp_path: Path, collector: Collector
) -> None:
    seg = tmp_path / "seg"
    seg.mkdir()
    path = seg / "w9-00000000000000000001-1.seg"
    whole = encode_predictions(batch("ok", 3))
    path.write_bytes(whole + encode_predictions(batch("torn", 1))[:40])  # nobody holds it
    result = collector.ingest_segments()
    assert (result.rows, result.torn_lines, result.segments_deleted) == (3, 1, 1)
    assert not path.exists()
    assert sorted(db_ids(collector.db_path)) == [f"ok/{j}" for j in range(3)]


def test_malformed_complete_line_is_skipped_and_recorded(
    tmp_path: Path, collector: Collector
) -> None:
    seg = tmp_path / "seg"
    seg.mkdir()
    path = seg / "w9-00000000000000000001-1.seg"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a live writer: the row must stay to show `torn`
    try:
        os.write(fd, encode_predictions(batch("a", 2)) + b'{"v":1,"garbage\n'
                 + encode_predictions(batch("b", 2)))
        assert collector.ingest_segments().torn_lines == 1
        with sqlite3.connect(collector.db_path) as conn:
            assert conn.execute("SELECT torn FROM segment_offsets").fetchall() == [(1,)]
    finally:
        os.close(fd)
    assert collector.ingest_segments().segments_deleted == 1
    assert sorted(db_ids(collector.db_path)) == ["a/0", "a/1", "b/0", "b/1"]


def test_live_writers_partial_line_waits_until_complete(
    tmp_path: Path, collector: Collector
) -> None:
    seg = tmp_path / "seg"
    seg.mkdir()
    path = seg / "w9-00000000000000000001-1.seg"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        late = encode_predictions(batch("late", 1))
        os.write(fd, encode_predictions(batch("a", 2)) + late[:30])
        result = collector.ingest_segments()
        assert (result.rows, result.torn_lines, result.segments_deleted) == (2, 0, 0)
        assert collector.stats()["segments_pending_bytes"] == 30
        assert collector.ingest_segments().rows == 0
        os.write(fd, late[30:])
        assert collector.ingest_segments().rows == 1
        assert path.exists()
    finally:
        os.close(fd)  # the "writer" is gone now
    result = collector.ingest_segments()
    assert (result.rows, result.torn_lines, result.segments_deleted) == (0, 0, 1)
    assert sorted(db_ids(collector.db_path)) == ["a/0", "a/1", "late/0"]


def test_two_threads_ingesting_while_appending(tmp_path: Path, collector: Collector) -> None:
    import threading

    w = SegmentWriter(tmp_path / "seg", "w0", fsync="never", max_bytes=4000)
    done = threading.Event()
    errors: list[BaseException] = []

    def ingest_until_done() -> None:
        try:
            while not done.is_set():
                collector.ingest_segments()
            collector.ingest_segments()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=ingest_until_done) for _ in range(2)]
    for t in threads:
        t.start()
    for i in range(150):
        w.append(batch(f"r{i}", 1 + i % 3))
    w.close()
    done.set()
    for t in threads:
        t.join()
    assert errors == []
    collector.ingest_segments()
    ids = db_ids(collector.db_path)
    assert len(ids) == len(set(ids)) == sum(1 + i % 3 for i in range(150))
    assert seg_files(tmp_path / "seg") == []


def test_offsets_table_is_added_to_an_existing_file(tmp_path: Path) -> None:
    db = tmp_path / "predictions.db"
    Collector(db, SPEC).close()
    with sqlite3.connect(db) as conn:  # as an older version left it
        conn.execute("DROP TABLE segment_offsets")
    with SegmentWriter(tmp_path / "seg", "w0") as w:
        w.append(batch("a", 2))
    with Collector(db, SPEC, segments=tmp_path / "seg") as c:
        assert c.ingest_segments().rows == 2


# -- the collector ------------------------------------------------------------------------


def test_collector_labels_and_samples_see_appended_rows_at_once(
    tmp_path: Path, collector: Collector
) -> None:
    w = SegmentWriter(tmp_path / "seg", "w0")
    rows = [pred("x/0", score=0.9, predicted=1), pred("x/1", score=0.1, predicted=0,
                                                         role="candidate", version="2")]
    w.append(rows)
    stats = collector.stats()
    assert stats["segments_pending_bytes"] == w.path.stat().st_size > 0
    assert stats["predictions"] == 0
    result = collector.add_labels([Label("x/0", 1, {"amount": 3.0}), Label("x/1", 0,
                                                                           {"amount": 1.0})])
    assert result.matched == 2
    assert result.unknown == ()
    assert collector.stats()["segments_pending_bytes"] == 0
    w.append([pred("y/0", ts=T0 + 1)])
    samples = collector.stage_samples(T0 + 3600, 0.0)
    assert sum(s.baseline.requests + s.candidate.requests for s in samples) == 3
    w.close()
    assert Collector(tmp_path / "other.db", SPEC).ingest_segments().rows == 0


def test_ingest_loop_ingests_in_the_background_and_on_stop(
    tmp_path: Path, collector: Collector
) -> None:
    with pytest.raises(ValueError, match="interval_s"):
        IngestLoop(collector, interval_s=0)
    loop = IngestLoop(collector, interval_s=0.02)
    loop.start()
    w = SegmentWriter(tmp_path / "seg", "w0")
    w.append(batch("a", 4))
    deadline = time.monotonic() + 10
    while len(db_ids(collector.db_path)) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(db_ids(collector.db_path)) == 4
    w.append(batch("b", 2))
    w.close()
    loop.stop()
    loop.stop()
    assert len(db_ids(collector.db_path)) == 6
    assert seg_files(tmp_path / "seg") == []
    assert collector.stats()["segments_pending_bytes"] == 0

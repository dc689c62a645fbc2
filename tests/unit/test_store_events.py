"""EventStore batching: one transaction per batch, commit_due, system events, close."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from edged.config import StoreConfig
from edged.store import EventStore, StoreError
from edged.vision.detections import Detections

NAMES = ["person", "bicycle", "car"]
T0 = 1_700_000_000.0


def frame(n: int, offset: float = 0.0) -> Detections:
    """n tracked detections, tracks 1..n (each its own event)."""
    boxes = np.array([[300 * i + offset, 0, 300 * i + 100 + offset, 200] for i in range(n)])
    return Detections(
        boxes.astype(np.float32),
        np.full(n, 0.8, np.float32),
        np.arange(n, dtype=np.int32) % len(NAMES),
        np.arange(1, n + 1, dtype=np.int32),
    )


def counts(conn: sqlite3.Connection) -> tuple[int, int, int]:
    return tuple(  # type: ignore[return-value]
        conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
        for t in ("events", "detections", "system_events")
    )


def open_store(tmp_path: Path, **overrides: object) -> EventStore:
    path = tmp_path / "state" / "events.db"
    settings: dict[str, object] = {"commit_interval_s": 60.0, "commit_max_rows": 100_000}
    settings.update(overrides)
    return EventStore.open(path, StoreConfig(path=path, **settings))


def test_open_creates_directories_and_sets_pragmas(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    try:
        conn = store._conn
        assert store.path.exists()
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        # Short: a lock held elsewhere must not block the sink loop (its heartbeat) for long.
        assert 100 <= conn.execute("PRAGMA busy_timeout").fetchone()[0] <= 1000
        # The size cap: 1024 MiB by default, less the WAL's share.
        max_pages = conn.execute("PRAGMA max_page_count").fetchone()[0]
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        assert 0.9 * 1024 * 2**20 < max_pages * page_size < 1024 * 2**20
        assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # INCREMENTAL
    finally:
        store.close()


def test_many_frames_are_one_transaction(tmp_path: Path) -> None:
    store = open_store(tmp_path, record_detections=True)
    statements: list[str] = []
    store._conn.set_trace_callback(statements.append)
    other = sqlite3.connect(store.path)
    version_before = other.execute("PRAGMA data_version").fetchone()[0]
    for i in range(20):
        store.add_frame("cam", i, T0 + 0.05 * i, frame(3, offset=2 * i), NAMES)
        # Nothing reaches the file before the batch is committed.
        assert counts(other) == (0, 0, 0)
        assert other.execute("PRAGMA data_version").fetchone()[0] == version_before
    store.add_system_event("start", pid=123)
    assert store.buffered_rows == 3 + 60 + 1
    assert not any(s.startswith(("INSERT", "UPDATE")) for s in statements)

    assert store.commit() == 64
    assert statements.count("BEGIN IMMEDIATE") == 1 and statements.count("COMMIT") == 1
    assert counts(other) == (3, 60, 1)
    assert other.execute("PRAGMA data_version").fetchone()[0] != version_before
    assert store.commits == 1 and store.rows_committed == 64
    assert store.committed_events == 3 and store.committed_detections == 60
    assert store.buffered_rows == 0
    assert store.commit() == 0 and store.commits == 1  # nothing buffered: no transaction
    other.close()
    store.close()


def test_detections_are_not_recorded_by_default(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.add_frame("cam", 1, T0, frame(2), NAMES)
    assert store.commit() == 2
    conn = sqlite3.connect(store.path)
    assert counts(conn) == (2, 0, 0)
    conn.close()
    store.close()


def test_recorded_detection_rows(tmp_path: Path) -> None:
    store = open_store(tmp_path, record_detections=True)
    store.add_frame("cam", 7, T0, frame(2), NAMES)
    store.add_frame("cam", 8, T0 + 0.1, frame(1, offset=5), NAMES, predicted=True)
    store.commit()
    conn = sqlite3.connect(store.path)
    rows = conn.execute(
        "SELECT ts, source, frame_seq, label, class_id, x1, y1, x2, y2, track_id, predicted"
        " FROM detections ORDER BY id"
    ).fetchall()
    conn.close()
    assert rows == [
        (T0, "cam", 7, "person", 0, 0.0, 0.0, 100.0, 200.0, 1, 0),
        (T0, "cam", 7, "bicycle", 1, 300.0, 0.0, 400.0, 200.0, 2, 0),
        (T0 + 0.1, "cam", 8, "person", 0, 5.0, 0.0, 105.0, 200.0, 1, 1),
    ]
    store.close()


def test_commit_due_by_interval(tmp_path: Path) -> None:
    before = time.monotonic()
    store = open_store(tmp_path, commit_interval_s=1.0)
    store.add_frame("cam", 1, T0, frame(1), NAMES)
    assert store.commit_due(before + 0.5) == 0
    assert store.commits == 0
    assert store.commit_due(time.monotonic() + 1.0) == 1
    assert store.commits == 1
    assert store.commit_due(time.monotonic() + 5.0) == 0  # nothing buffered
    store.close()


def test_commit_due_by_row_count(tmp_path: Path) -> None:
    store = open_store(tmp_path, commit_max_rows=5, record_detections=True)
    now = time.monotonic()
    store.add_frame("cam", 1, T0, frame(2), NAMES)  # 2 events + 2 detections
    assert store.commit_due(now) == 0
    store.add_frame("cam", 2, T0 + 0.1, frame(2), NAMES)  # +2 detections, events coalesced
    assert store.buffered_rows == 6
    assert store.commit_due(now) == 6
    store.close()


def test_system_events(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    before = time.time()
    store.add_system_event("restart", worker="inference", attempt=2, path=Path("/x"))
    store.add_system_event("stop")
    store.commit()
    conn = sqlite3.connect(store.path)
    rows = conn.execute("SELECT ts, kind, detail FROM system_events ORDER BY id").fetchall()
    conn.close()
    assert [r[1] for r in rows] == ["restart", "stop"]
    assert json.loads(rows[0][2]) == {"worker": "inference", "attempt": 2, "path": "/x"}
    assert json.loads(rows[1][2]) == {}
    assert rows[0][0] >= before
    store.close()


def test_close_commits_the_buffer(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.add_frame("cam", 1, T0, frame(2), NAMES)
    store.add_system_event("stop", reason="SIGTERM")
    store.close()
    conn = sqlite3.connect(store.path)
    assert counts(conn) == (2, 0, 1)
    conn.close()


def test_failed_commit_keeps_the_buffer_and_retries(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.add_frame("cam", 1, T0, frame(1), NAMES)
    blocker = sqlite3.connect(store.path, isolation_level=None, timeout=0)
    blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock
    store._conn.execute("PRAGMA busy_timeout = 50")
    with pytest.raises(StoreError, match=r"events\.db"):
        store.commit()
    assert store.failed_commits == 1 and store.buffered_rows == 1
    blocker.execute("ROLLBACK")
    blocker.close()
    store.add_frame("cam", 2, T0 + 0.1, frame(1, offset=3), NAMES)
    assert store.commit() == 1
    store.close()
    conn = sqlite3.connect(store.path)
    assert conn.execute("SELECT hits, frame_last FROM events").fetchall() == [(2, 2)]
    conn.close()


def test_stats(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.add_frame("cam", 1, T0, frame(2), NAMES)
    stats = store.stats()
    assert stats["buffered_rows"] == 2 and stats["open_events"] == 2
    store.commit()
    stats = store.stats()
    assert stats["committed_events"] == 2 and stats["commits"] == 1
    assert isinstance(stats["db_bytes"], int) and stats["db_bytes"] > 0
    store.close()

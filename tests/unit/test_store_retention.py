"""Retention by age and by size, on real files."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from edged.config import StoreConfig
from edged.store import EventStore
from edged.store.db import file_bytes
from edged.vision.detections import Detections

DAY = 86_400.0
NAMES = ["person"]


def box(track_id: int) -> Detections:
    return Detections(np.array([[10, 20, 110, 220]], np.float32), np.array([0.9], np.float32),
                      np.zeros(1, np.int32), np.array([track_id], np.int32))  # fmt: skip


def fill(store: EventStore, start: float, count: int, step: float = 10.0, seq0: int = 0) -> None:
    """`count` single-hit events (one track each), `step` seconds apart."""
    for i in range(count):
        store.add_frame("cam", seq0 + i, start + i * step, box(seq0 + i), NAMES)
    store.commit()


def table_counts(path: Path) -> dict[str, int]:
    conn = sqlite3.connect(path)
    try:
        return {
            t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for t in ("events", "detections", "system_events")
        }
    finally:
        conn.close()


def test_prune_by_age(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    cfg = StoreConfig(path=path, retention_days=7, record_detections=True, event_gap_s=2)
    now = time.time()
    store = EventStore.open(path, cfg)
    fill(store, now - 10 * DAY, 30)  # too old
    fill(store, now - 1 * DAY, 20, seq0=100)  # kept
    store.add_system_event("start")
    store.commit()
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(
            "INSERT INTO system_events (ts, kind, detail) VALUES (?, 'stop', '{}')",
            (now - 8 * DAY,),
        )
    conn.close()
    assert table_counts(path) == {"events": 50, "detections": 50, "system_events": 2}

    assert store.prune(now) == 30 + 30 + 1
    assert table_counts(path) == {"events": 20, "detections": 20, "system_events": 1}
    conn = sqlite3.connect(path)
    oldest = conn.execute("SELECT min(last_seen) FROM events").fetchone()[0]
    assert oldest >= now - 7 * DAY
    conn.close()
    assert store.prune(now) == 0
    assert store.pruned_rows == 61
    store.close()


def test_an_event_spanning_the_cutoff_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    now = time.time()
    store = EventStore.open(path, StoreConfig(path=path, retention_days=1, event_gap_s=3600))
    store.add_frame("cam", 1, now - 2 * DAY, box(1), NAMES)  # starts before the cutoff ...
    store.add_frame("cam", 2, now - 2 * DAY + 1800, box(1), NAMES)
    store.commit()
    store.add_frame("cam", 3, now - 0.5 * DAY, box(1), NAMES)  # a new event (gap > 1 h)
    store.commit()
    assert store.prune(now) == 1  # only the event last seen before the cutoff
    store.close()


@pytest.mark.parametrize("auto_vacuum", [True, False])
def test_prune_by_size_shrinks_the_file_and_keeps_the_newest(
    tmp_path: Path, auto_vacuum: bool
) -> None:
    path = tmp_path / "events.db"
    now = time.time()
    # Filled under a roomy cap, then reopened with max_db_mb lowered below its size.
    big = StoreConfig(path=path, max_db_mb=10, record_detections=True, event_gap_s=2)
    with EventStore.open(path, big) as store:
        fill(store, now - DAY, 4000)
        store.add_system_event("start")
    if not auto_vacuum:  # a file made without incremental auto-vacuum: converted once
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA auto_vacuum = NONE")
        conn.execute("VACUUM")
        assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
        conn.close()
    limit_mb = 0.25
    limit = int(limit_mb * 1024 * 1024)
    assert file_bytes(path) > 2 * limit
    cfg = StoreConfig(path=path, max_db_mb=limit_mb, record_detections=True, event_gap_s=2)
    store = EventStore.open(path, cfg)
    assert store.cap.clamped  # SQLite keeps the file's size as the cap until it shrinks
    newest = table_counts(path)["events"]

    deleted = store.prune(now)

    assert deleted > 0
    assert file_bytes(path) <= limit
    assert path.stat().st_size <= store.cap.db_bytes
    assert not store.cap.clamped  # the cap is tight again
    conn = sqlite3.connect(path)
    ids = [r[0] for r in conn.execute("SELECT id FROM events ORDER BY id")]
    assert ids and ids[-1] == newest  # the newest event is kept ...
    assert ids == list(range(ids[0], newest + 1))  # ... and only the oldest ones went
    first_kept = conn.execute("SELECT min(last_seen) FROM events").fetchone()[0]
    assert conn.execute("SELECT min(ts) FROM detections").fetchone()[0] >= first_kept - 10
    assert conn.execute("SELECT count(*) FROM system_events").fetchone()[0] == 1
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
    conn.close()
    assert deleted == (4000 - len(ids)) * 2  # events + their detections

    # Under the limit now: the next prune deletes nothing, and the store keeps working.
    assert store.prune(now) == 0
    fill(store, now, 10, seq0=10_000)
    store.close()
    assert table_counts(path)["events"] == len(ids) + 10


def test_prune_by_size_when_under_the_limit_does_nothing(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    store = EventStore.open(path, StoreConfig(path=path, max_db_mb=10))
    fill(store, time.time() - 100, 50)
    assert store.prune(time.time()) == 0
    assert table_counts(path)["events"] == 50
    store.close()

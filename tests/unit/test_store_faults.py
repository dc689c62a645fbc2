"""Storage faults on real files: a full database (the size cap) and one locked by another
process. The store keeps going, loses nothing it promised to keep, and the file stays intact."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from edged.config import StoreConfig
from edged.store import EventStore, StoreError
from edged.store.db import file_bytes
from edged.store.faults import Backoff
from edged.vision.detections import Detections

ROOT = Path(__file__).resolve().parents[2]
NAMES = ["person"]
T0 = 1_700_000_000.0

# Another process takes the write lock, says so, holds it, then lets go.
LOCKER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
conn.close()
print("released", flush=True)
"""


def hold_lock(path: Path, seconds: float) -> subprocess.Popen[str]:
    """Start a process that holds `path`'s write lock for `seconds`; returns once it has it."""
    proc = subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(path), str(seconds)],
        stdout=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line == "locked", f"locker said {line!r}"
    return proc


def people(n: int, frame_seq: int, first_track: int = 1) -> Detections:
    """n people far apart, jittering a few px: tracks first_track .. first_track + n - 1."""
    dx = frame_seq % 10
    boxes = [[120 * k + dx, 10, 120 * k + 60 + dx, 130] for k in range(n)]
    return Detections(
        np.array(boxes, np.float32),
        np.full(n, 0.8, np.float32),
        np.zeros(n, np.int32),
        np.arange(first_track, first_track + n, dtype=np.int32),
    )


def rows(path: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


# -- database full ------------------------------------------------------------------------------


@pytest.mark.slow
def test_tiny_cap_keeps_committing_prunes_the_oldest_and_stays_under_the_cap(
    tmp_path: Path,
) -> None:
    path = tmp_path / "events.db"
    cfg = StoreConfig(path=path, max_db_mb=0.25, record_detections=True, event_gap_s=0.5,
                      commit_interval_s=60, commit_max_rows=500)  # fmt: skip
    store = EventStore.open(path, cfg)
    budget = 256 * 1024
    assert store.cap.db_bytes <= budget
    frames, per_frame = 4000, 5
    biggest_db = biggest_total = 0
    with capture_logs() as logs:
        for seq in range(frames):
            # A new set of people (new tracks) every 100 frames, 2 s apart: old events close.
            group = seq // 100
            store.add_frame("cam", seq, T0 + seq * 0.04 + group * 2,
                            people(per_frame, seq, first_track=1 + group * per_frame),
                            NAMES)  # fmt: skip
            store.commit_due(time.monotonic())  # by rows: every ~100 frames; never raises here
            biggest_db = max(biggest_db, path.stat().st_size)
            biggest_total = max(biggest_total, file_bytes(path))
        store.close()

    full = [e for e in logs if e["event"] == "store.full"]
    assert full and all(e["log_level"] == "error" for e in full)
    assert store.full_events == len(full) and store.failed_commits == 0
    assert store.dropped_detections == 0  # every detection made it into the file (for a while)
    assert store.committed_detections == frames * per_frame
    # The database file never outgrows its share of the budget; the WAL adds at most about
    # one batch beyond its own share.
    assert biggest_db <= store.cap.db_bytes
    assert biggest_total <= budget + 160 * 1024
    print(f"full {len(full)}x, pruned {store.pruned_rows} rows, largest db {biggest_db} B, "
          f"db+wal {biggest_total} B, cap {store.cap.db_bytes} B")  # fmt: skip

    assert rows(path, "PRAGMA integrity_check") == [("ok",)]
    # The newest rows are there, the oldest are gone.
    first_event, last_event = rows(path, "SELECT min(frame_first), max(frame_last) FROM events")[0]
    first_det, last_det, count = rows(
        path, "SELECT min(frame_seq), max(frame_seq), count(*) FROM detections"
    )[0]
    assert last_event == last_det == frames - 1
    assert first_event > 0 and first_det > frames // 2
    assert count == (frames - first_det) * per_frame  # pruned strictly oldest first
    errors = rows(path, "SELECT detail FROM system_events WHERE kind = 'error'")
    details = [json.loads(d) for (d,) in errors]
    assert details and all(d["what"] == "database full" and d["pruned"] > 0 for d in details)


def test_a_batch_larger_than_the_cap_drops_old_detections_never_events(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    cfg = StoreConfig(path=path, max_db_mb=0.25, record_detections=True, event_gap_s=0.5,
                      commit_max_rows=1000)  # fmt: skip
    store = EventStore.open(path, cfg)
    frames = 1500  # 7 500 detections (~500 KB) of 5 events: more than the whole cap
    for seq in range(frames):
        store.add_frame("cam", seq, T0 + seq * 0.04, people(5, seq), NAMES)
    with pytest.raises(StoreError, match="full"):
        store.commit()
    assert 0 < store.dropped_detections < frames * 5 and store.buffered_rows > 5
    for _ in range(10):  # each failure halves the raw detections buffered
        try:
            store.commit()
            break
        except StoreError:
            continue
    assert store.buffered_rows == 0
    store.close()
    assert rows(path, "SELECT count(*), max(frame_last), max(hits) FROM events") == [
        (5, frames - 1, frames)
    ]
    kept = rows(path, "SELECT count(*), max(frame_seq) FROM detections")[0]
    assert kept[0] + store.dropped_detections == frames * 5 and kept[1] == frames - 1
    assert rows(path, "PRAGMA integrity_check") == [("ok",)]


def test_an_open_event_whose_row_was_pruned_is_written_again(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    store = EventStore.open(path, StoreConfig(path=path, event_gap_s=10))
    store.add_frame("cam", 1, T0, people(1, 0), NAMES)
    store.commit()
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("DELETE FROM events")  # retention took it while it is still open
    conn.close()
    store.add_frame("cam", 2, T0 + 1, people(1, 1), NAMES)
    store.commit()
    store.close()
    assert rows(path, "SELECT hits, frame_first, frame_last FROM events") == [(2, 1, 2)]


# -- database locked ------------------------------------------------------------------------------


def test_backoff_doubles_to_its_cap_and_resets() -> None:
    backoff = Backoff(first_s=0.5, max_s=30.0)
    delays = [backoff.failed(100.0 + i) for i in range(8)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert not backoff.ready(107.0 + 29.9) and backoff.ready(107.0 + 30.0)
    assert backoff.succeeded(110.0) == pytest.approx(10.0)
    assert backoff.ready(0.0) and not backoff.active and backoff.failed(200.0) == 0.5


def test_locked_by_another_process_backs_off_then_commits_everything(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    cfg = StoreConfig(path=path, record_detections=True, event_gap_s=0.5,
                      commit_interval_s=0.1, commit_max_rows=50)  # fmt: skip
    store = EventStore.open(path, cfg)
    locker = hold_lock(path, 2.0)
    seq = 0
    slowest_call = 0.0
    started = time.monotonic()
    with capture_logs() as logs:
        # The sink's loop: a frame, then commit_due, every 50 ms; ~4 s in all.
        while time.monotonic() - started < 4.0:
            store.add_frame("cam", seq, T0 + seq * 0.05, people(2, seq), NAMES)
            seq += 1
            before = time.monotonic()
            store.commit_due(before)  # a lock never raises out of commit_due
            slowest_call = max(slowest_call, time.monotonic() - before)
            time.sleep(0.05)
        store.close()
    assert locker.wait(10) == 0

    # Every attempt waits at most the short busy_timeout, so the loop keeps beating.
    assert slowest_call < 1.0
    # Back-off: attempts at ~0, ~1.0 and ~2.5 s; retrying at every call would make ~4.
    assert 1 <= store.locked_commits <= 3, store.locked_commits
    locked = [e for e in logs if e["event"] == "store.locked"]
    unlocked = [e for e in logs if e["event"] == "store.unlocked"]
    assert len(locked) == 1 and locked[0]["log_level"] == "warning"  # once per episode
    assert len(unlocked) == 1 and 1.5 <= unlocked[0]["waited_s"] <= 4.0
    assert unlocked[0]["attempts"] == store.locked_commits + 1
    print(f"lock: {store.locked_commits} failed attempts, waited {unlocked[0]['waited_s']} s, "
          f"slowest commit_due {slowest_call:.2f} s")  # fmt: skip
    # Nothing was lost.
    assert rows(path, "SELECT count(*), max(frame_seq) FROM detections") == [(2 * seq, seq - 1)]
    assert rows(path, "SELECT max(frame_last) FROM events") == [(seq - 1,)]
    assert rows(path, "PRAGMA integrity_check") == [("ok",)]


def test_commit_raises_while_locked_and_keeps_the_buffer(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    store = EventStore.open(path, StoreConfig(path=path))
    store.add_frame("cam", 1, T0, people(3, 0), NAMES)
    locker = hold_lock(path, 1.0)
    with pytest.raises(StoreError, match="locked"):
        store.commit()
    assert store.locked and store.buffered_rows == 3
    assert store.commit_due(time.monotonic()) == 0  # inside the back-off: not even tried
    assert store.locked_commits == 1
    assert locker.wait(10) == 0
    assert store.commit() == 3 and not store.locked
    store.close()


def test_close_waits_out_a_lock_to_save_the_buffer(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    store = EventStore.open(path, StoreConfig(path=path))
    store.add_frame("cam", 1, T0, people(3, 0), NAMES)
    locker = hold_lock(path, 1.5)
    store.close()  # longer busy_timeout at close: the lock goes before it runs out
    assert locker.wait(10) == 0
    assert rows(path, "SELECT count(*) FROM events") == [(3,)]


def test_prune_while_locked_is_deferred(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    store = EventStore.open(path, StoreConfig(path=path, retention_days=1))
    store.add_frame("cam", 1, time.time() - 3 * 86_400, people(1, 0), NAMES)
    store.commit()
    locker = hold_lock(path, 1.0)
    with capture_logs() as logs:
        assert store.prune(time.time()) == 0  # no StoreError: the next prune does it
    assert [e["event"] for e in logs] == ["store.prune_deferred"]
    assert locker.wait(10) == 0
    assert store.prune(time.time()) == 1
    store.close()

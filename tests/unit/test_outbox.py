"""The outbox: written in the event's own transaction, ended exactly when the event closes,
read and acknowledged by the uplink, pruned with the events (real SQLite files)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from edged.config import StoreConfig
from edged.store import EventStore, StoreError
from edged.store.outbox import Outbox
from edged.store.schema import MIGRATIONS, migrate
from edged.vision.detections import Detections

NAMES = ["person", "bicycle", "car"]
T0 = 1_700_000_000.0


def people(track_ids: list[int], score: float = 0.8) -> Detections:
    n = len(track_ids)
    boxes = np.array([[100.0 * t, 10, 100.0 * t + 50, 120] for t in track_ids], np.float32)
    return Detections(boxes.reshape(-1, 4), np.full(n, score, np.float32),
                      np.zeros(n, np.int32), np.array(track_ids, np.int32))


def open_store(tmp_path: Path, **overrides: object) -> EventStore:
    path = tmp_path / "events.db"
    settings: dict[str, object] = {"commit_interval_s": 60.0, "commit_max_rows": 100_000,
                                   "event_gap_s": 2.0}
    settings.update(overrides)
    return EventStore.open(path, StoreConfig(path=path, **settings))


def outbox_rows(path: Path) -> list[tuple[str, int, int, int]]:
    """(uid, version, ended, sent_version) per event, by event id."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(
            "SELECT e.uid, o.version, o.ended, o.sent_version FROM outbox o"
            " JOIN events e ON e.id = o.event_id ORDER BY e.id").fetchall()
    finally:
        conn.close()


def test_every_event_write_queues_it_in_the_same_transaction(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.add_frame("cam", 1, T0, people([1, 2]), NAMES)
    store.commit()
    assert [r[1:] for r in outbox_rows(store.path)] == [(1, 0, 0), (1, 0, 0)]
    store.add_frame("cam", 2, T0 + 0.1, people([1]), NAMES)
    store.add_frame("cam", 3, T0 + 0.2, people([1]), NAMES)  # coalesced: one write per batch
    store.commit()
    assert [r[1:] for r in outbox_rows(store.path)] == [(2, 0, 0), (1, 0, 0)]
    store.close()


def test_a_failing_outbox_write_rolls_the_event_back_too(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    conn = sqlite3.connect(store.path, isolation_level=None)
    conn.execute("CREATE TRIGGER no_outbox BEFORE INSERT ON outbox"
                 " BEGIN SELECT RAISE(ABORT, 'outbox refused'); END")
    store.add_frame("cam", 1, T0, people([1]), NAMES)
    with pytest.raises(StoreError, match="outbox refused"):
        store.commit()
    assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 0  # never one alone
    conn.execute("DROP TRIGGER no_outbox")
    conn.close()
    store._backoff.succeeded(time.monotonic())  # retry now, not after the back-off
    assert store.commit() == 1
    assert [r[1:] for r in outbox_rows(store.path)] == [(1, 0, 0)]
    store.close()


def test_an_event_is_marked_ended_when_its_track_goes_unseen(tmp_path: Path) -> None:
    store = open_store(tmp_path, event_gap_s=1.0)
    store.add_frame("cam", 1, T0, people([1, 2]), NAMES)
    store.commit()
    store.add_frame("cam", 2, T0 + 0.5, people([2]), NAMES)
    store.commit()
    assert [r[1:3] for r in outbox_rows(store.path)] == [(1, 0), (2, 0)]
    store.add_frame("cam", 3, T0 + 1.4, people([2]), NAMES)  # track 1 unseen for 1.4 s > gap
    store.commit()
    rows = outbox_rows(store.path)
    assert [r[1:3] for r in rows] == [(2, 1), (3, 0)]  # ending bumps the version once more
    assert store.ended_events == 1
    store.close()  # closing ends what is still open
    assert [r[1:3] for r in outbox_rows(store.path)] == [(2, 1), (4, 1)]


def test_a_reused_track_id_ends_the_old_event(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.add_frame("cam", 1, T0, people([1]), NAMES)
    car = Detections(np.array([[0, 0, 10, 10]], np.float32), np.array([0.9], np.float32),
                     np.array([2], np.int32), np.array([1], np.int32))
    store.add_frame("cam", 2, T0 + 0.1, car, NAMES)  # same track id, another class
    store.commit()
    assert [r[1:3] for r in outbox_rows(store.path)] == [(2, 1), (1, 0)]
    store.close()


def test_with_no_frames_events_end_by_the_clock(tmp_path: Path) -> None:
    store = open_store(tmp_path, event_gap_s=1.0)
    store.add_frame("cam", 1, T0, people([1]), NAMES)
    now = time.monotonic()
    store.commit_due(now + 60)  # a minute without frames (the camera is down)
    assert store.open_events == 0
    assert [r[1:3] for r in outbox_rows(store.path)] == [(2, 1)]
    # The track is seen again: a new event, not the old one extended.
    store.add_frame("cam", 2, T0 + 61, people([1]), NAMES)
    store.commit()
    assert [r[1:3] for r in outbox_rows(store.path)] == [(2, 1), (1, 0)]
    store.close()


def test_opening_ends_what_a_crashed_sink_left_open(tmp_path: Path) -> None:
    crashed = open_store(tmp_path)
    crashed.add_frame("cam", 1, T0, people([1, 2]), NAMES)
    crashed.commit()  # ... and then the process dies: no close()
    again = open_store(tmp_path)
    assert [r[1:3] for r in outbox_rows(again.path)] == [(2, 1), (2, 1)]
    again.close()
    crashed._conn.close()


def test_pending_final_and_updates_exclude_and_acknowledge(tmp_path: Path) -> None:
    store = open_store(tmp_path, event_gap_s=1.0)
    store.add_frame("cam", 1, T0, people([1, 2, 3]), NAMES)
    store.add_frame("cam", 2, T0 + 0.8, people([3]), NAMES)
    store.add_frame("cam", 3, T0 + 1.5, people([3]), NAMES)  # 1 and 2 end
    store.commit()
    outbox = Outbox.open(store.path)
    assert outbox is not None
    final = outbox.pending(10, final_only=True)
    assert [r.ended for r in final] == [True, True]
    assert final[0].event["label"] == "person" and final[0].event["track_id"] == 1
    assert final[0].event["box"] == [100.0, 10.0, 150.0, 120.0]
    assert len(outbox.pending(10, final_only=False)) == 3  # the open event too
    assert [r.event_id for r in outbox.pending(10, True, exclude={final[0].event_id})] == [
        final[1].event_id]
    assert outbox.pending(1, True)[0].event_id == final[0].event_id  # oldest first
    assert outbox.backlog() == 3
    assert outbox.mark_sent([(r.event_id, r.version) for r in final]) == 2
    assert outbox.pending(10, True) == [] and outbox.backlog() == 1
    # A change after the acknowledged version is pending again (updates mode).
    store.add_frame("cam", 4, T0 + 1.6, people([3]), NAMES)
    store.commit()
    [open_row] = outbox.pending(10, final_only=False)
    outbox.mark_sent([(open_row.event_id, open_row.version - 1)])  # an older ack changes nothing
    assert outbox.backlog() == 1
    outbox.close()
    store.close()


def test_open_waits_for_the_sink_to_create_and_migrate_the_file(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    assert Outbox.open(path) is None and not path.exists()  # never creates it
    conn = sqlite3.connect(path, isolation_level=None)
    migrate(conn, path, MIGRATIONS[:3])
    conn.close()
    assert Outbox.open(path) is None  # v3: no outbox yet
    EventStore.open(path, StoreConfig(path=path)).close()
    outbox = Outbox.open(path)
    assert outbox is not None and outbox.backlog() == 0
    outbox.close()


def test_mark_sent_on_a_locked_file_raises_and_records_nothing(tmp_path: Path) -> None:
    store = open_store(tmp_path, event_gap_s=1.0)
    store.add_frame("cam", 1, T0, people([1]), NAMES)
    store.close()
    outbox = Outbox.open(store.path)
    assert outbox is not None
    [row] = outbox.pending(10, True)
    locker = sqlite3.connect(store.path, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    with pytest.raises(StoreError, match="locked"):
        outbox.mark_sent([(row.event_id, row.version)])
    locker.execute("ROLLBACK")
    locker.close()
    assert outbox.backlog() == 1
    assert outbox.mark_sent([(row.event_id, row.version)]) == 1 and outbox.backlog() == 0
    outbox.close()


def test_retention_deletes_the_outbox_rows_of_pruned_events(tmp_path: Path) -> None:
    store = open_store(tmp_path, retention_days=1)
    old, new = time.time() - 3 * 86_400, time.time()
    store.add_frame("cam", 1, old, people([1, 2]), NAMES)
    store.add_frame("cam", 2, new, people([3]), NAMES)  # 1 and 2 end: 3 days unseen
    store.commit()
    outbox = Outbox.open(store.path)
    assert outbox is not None and outbox.backlog() == 3
    assert store.prune(time.time()) == 2
    assert outbox.backlog() == 1  # the backlog never outlives retention
    assert len(outbox_rows(store.path)) == 1
    outbox.close()
    store.close()


def test_v3_file_is_migrated_to_v4_with_rows_intact(tmp_path: Path) -> None:
    path = tmp_path / "v3.db"
    conn = sqlite3.connect(path, isolation_level=None)
    migrate(conn, path, MIGRATIONS[:3])
    conn.execute(
        "INSERT INTO events (uid, source, label, class_id, first_seen, last_seen, best_score,"
        " x1, y1, x2, y2, hits, frame_first, frame_last, track_id)"
        " VALUES ('old', 'cam', 'person', 0, 1.0, 2.0, 0.9, 0, 0, 1, 1, 3, 1, 3, 7)")
    conn.close()
    store = EventStore.open(path, StoreConfig(path=path))
    assert store.schema_version == 4
    store.close()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT uid, track_id, snapshot FROM events").fetchall() == [
        ("old", 7, None)]
    # Events from before the outbox existed are not queued (nothing sends history twice).
    assert conn.execute("SELECT count(*) FROM outbox").fetchone()[0] == 0
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    conn.close()


def test_pending_query_uses_the_partial_index(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.close()
    conn = sqlite3.connect(store.path)
    plan = " ".join(str(r[-1]) for r in conn.execute(
        "EXPLAIN QUERY PLAN SELECT o.event_id FROM outbox AS o JOIN events AS e"
        " ON e.id = o.event_id WHERE o.sent_version < o.version ORDER BY o.event_id LIMIT 10"))
    backlog = " ".join(str(r[-1]) for r in conn.execute(
        "EXPLAIN QUERY PLAN SELECT count(*) FROM outbox WHERE sent_version < version"))
    conn.close()
    assert "outbox_pending" in plan and "outbox_pending" in backlog

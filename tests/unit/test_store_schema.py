"""Schema versions and migrations, on real files."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from edged.config import StoreConfig
from edged.store import LATEST_VERSION, EventStore, StoreError, query_events
from edged.store.db import open_writer
from edged.store.schema import MIGRATIONS, Migration, migrate, schema_version, sql
from edged.vision.detections import Detections

# A frozen copy of what migration 1 created when v1 shipped: written out here, not imported,
# so that editing a shipped migration breaks this test.
V1_BY_HAND = """
CREATE TABLE schema_version (
  version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL);
CREATE TABLE events (
  id INTEGER PRIMARY KEY, uid TEXT NOT NULL UNIQUE, source TEXT NOT NULL, label TEXT NOT NULL,
  class_id INTEGER NOT NULL, first_seen REAL NOT NULL, last_seen REAL NOT NULL,
  best_score REAL NOT NULL, x1 REAL NOT NULL, y1 REAL NOT NULL, x2 REAL NOT NULL,
  y2 REAL NOT NULL, hits INTEGER NOT NULL DEFAULT 1, frame_first INTEGER NOT NULL,
  frame_last INTEGER NOT NULL);
CREATE TABLE system_events (
  id INTEGER PRIMARY KEY, ts REAL NOT NULL, kind TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '{}');
INSERT INTO events (uid, source, label, class_id, first_seen, last_seen, best_score,
  x1, y1, x2, y2, hits, frame_first, frame_last) VALUES
  ('a1', 'cam', 'person', 0, 100.0, 105.0, 0.9, 1, 2, 3, 4, 7, 10, 17),
  ('a2', 'cam', 'dog', 16, 200.0, 201.0, 0.6, 5, 6, 7, 8, 2, 20, 21);
INSERT INTO system_events (ts, kind, detail) VALUES (99.0, 'start', '{"pid": 1}');
"""


# The same for migration 2 (applied on top of V1_BY_HAND), with a raw detection row.
V2_BY_HAND = """
CREATE TABLE detections (
  id INTEGER PRIMARY KEY, ts REAL NOT NULL, source TEXT NOT NULL, frame_seq INTEGER NOT NULL,
  label TEXT NOT NULL, class_id INTEGER NOT NULL, score REAL NOT NULL,
  x1 REAL NOT NULL, y1 REAL NOT NULL, x2 REAL NOT NULL, y2 REAL NOT NULL);
CREATE INDEX detections_ts ON detections (ts);
CREATE INDEX events_last_seen ON events (last_seen);
CREATE INDEX events_first_seen ON events (first_seen);
CREATE INDEX system_events_ts ON system_events (ts);
INSERT INTO detections (ts, source, frame_seq, label, class_id, score, x1, y1, x2, y2) VALUES
  (104.5, 'cam', 16, 'person', 0, 0.85, 1, 2, 3, 4);
"""


def make_v1(path: Path, *, table_row: bool = True, user_version: bool = True) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(V1_BY_HAND)
    if table_row:
        conn.execute("INSERT INTO schema_version VALUES (1, 'events and system_events', 1.0)")
    if user_version:
        conn.execute("PRAGMA user_version = 1")
    conn.close()


def make_v2(path: Path) -> None:
    """A file exactly as the last release before the tracker (schema v2) left it."""
    make_v1(path)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(V2_BY_HAND)
    conn.execute("INSERT INTO schema_version VALUES (2, 'detections table, time indexes', 2.0)")
    conn.execute("PRAGMA user_version = 2")
    conn.close()


def tracked(x: float, track_id: int) -> Detections:
    return Detections(np.array([[x, 0, x + 10, 10]], np.float32), np.array([0.7], np.float32),
                      np.zeros(1, np.int32), np.array([track_id], np.int32))  # fmt: skip


def layout(path: Path) -> dict[str, object]:
    """Every table's columns (name, type, notnull, default, pk) and every index's columns."""
    conn = sqlite3.connect(path)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        out: dict[str, object] = {
            t: [tuple(r[1:]) for r in conn.execute(f"PRAGMA table_info({t})")] for t in tables
        }
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='index'"):
            out[name] = [r[2] for r in conn.execute(f"PRAGMA index_info({name})")]
        return out
    finally:
        conn.close()


def cfg(path: Path) -> StoreConfig:
    return StoreConfig(path=path, record_detections=True)


def test_fresh_file_is_at_latest_version(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    with EventStore.open(path, cfg(path)) as store:
        assert store.schema_version == LATEST_VERSION >= 2
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == LATEST_VERSION
    versions = [r[0] for r in conn.execute("SELECT version FROM schema_version ORDER BY 1")]
    assert versions == list(range(1, LATEST_VERSION + 1))
    conn.close()
    # Reopening applies nothing twice.
    EventStore.open(path, cfg(path)).close()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT count(*) FROM schema_version").fetchone()[0] == LATEST_VERSION
    conn.close()


@pytest.mark.parametrize(
    ("table_row", "user_version"), [(True, True), (True, False), (False, True)]
)
def test_v1_file_is_migrated_with_rows_intact(
    tmp_path: Path, table_row: bool, user_version: bool
) -> None:
    path = tmp_path / "v1.db"
    make_v1(path, table_row=table_row, user_version=user_version)
    store = EventStore.open(path, cfg(path))
    assert store.schema_version == LATEST_VERSION
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == LATEST_VERSION
    rows = conn.execute(
        "SELECT uid, label, class_id, first_seen, last_seen, best_score, x1, y1, x2, y2, hits,"
        " frame_first, frame_last FROM events ORDER BY id"
    ).fetchall()
    assert rows == [
        ("a1", "person", 0, 100.0, 105.0, 0.9, 1.0, 2.0, 3.0, 4.0, 7, 10, 17),
        ("a2", "dog", 16, 200.0, 201.0, 0.6, 5.0, 6.0, 7.0, 8.0, 2, 20, 21),
    ]
    assert conn.execute("SELECT ts, kind, detail FROM system_events").fetchall() == [
        (99.0, "start", '{"pid": 1}')
    ]
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert {"detections_ts", "events_last_seen", "system_events_ts"} <= indexes
    # The migrated file takes new rows in every table, next to the old ones.
    store.add_frame("cam", 1, 300.0, tracked(0, 5), ["person"])
    store.add_system_event("start")
    store.close()
    counts = [
        conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
        for t in ("events", "detections", "system_events")
    ]
    assert counts == [3, 1, 2]
    tracks = conn.execute("SELECT uid, track_id FROM events ORDER BY id").fetchall()
    assert [t for _, t in tracks] == [None, None, 5]
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()


def test_hand_written_v2_matches_the_shipped_migrations(tmp_path: Path) -> None:
    """Migrations 1 and 2 are history: they must still build exactly what v2 files hold."""
    by_hand, by_code = tmp_path / "hand.db", tmp_path / "code.db"
    make_v2(by_hand)
    conn = sqlite3.connect(by_code, isolation_level=None)
    assert migrate(conn, by_code, MIGRATIONS[:2]) == 2
    conn.close()
    assert layout(by_hand) == layout(by_code)


def test_v2_file_is_migrated_to_tracks_with_rows_intact(tmp_path: Path) -> None:
    path = tmp_path / "v2.db"
    make_v2(path)
    before = layout(path)
    with capture_logs() as logs:
        store = EventStore.open(path, cfg(path))
    assert store.schema_version == LATEST_VERSION
    migrated = [(e["version"], e["name"]) for e in logs if e["event"] == "store.migrated"]
    assert migrated[0] == (3, "tracks")
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == LATEST_VERSION
    assert [r[0] for r in conn.execute("SELECT version FROM schema_version ORDER BY 1")] == \
        list(range(1, LATEST_VERSION + 1))
    # The new columns, and nothing else changed.
    after = layout(path)
    assert after["events"] == [*before["events"], ("track_id", "INTEGER", 0, None, 0),  # type: ignore[misc]
                               ("snapshot", "TEXT", 0, None, 0)]  # v3, then v4
    assert after["detections"] == [
        *before["detections"],  # type: ignore[misc]
        ("track_id", "INTEGER", 0, None, 0),
        ("predicted", "INTEGER", 1, "0", 0),
    ]
    assert after["events_source_track"] == ["source", "track_id"]
    unchanged = set(before) - {"events", "detections"}
    assert {k: after[k] for k in unchanged} == {k: before[k] for k in unchanged}
    # Old rows are intact; they have no track and were observations.
    old = conn.execute(
        "SELECT uid, label, first_seen, last_seen, best_score, x1, hits, frame_first, frame_last,"
        " track_id FROM events ORDER BY id"
    ).fetchall()
    assert old == [
        ("a1", "person", 100.0, 105.0, 0.9, 1.0, 7, 10, 17, None),
        ("a2", "dog", 200.0, 201.0, 0.6, 5.0, 2, 20, 21, None),
    ]
    assert conn.execute(
        "SELECT ts, frame_seq, label, score, x1, track_id, predicted FROM detections"
    ).fetchall() == [(104.5, 16, "person", 0.85, 1.0, None, 0)]
    # New rows carry their track ids (and predicted frames their flag).
    store.add_frame("cam", 30, 300.0, tracked(0, 1), ["person"])
    store.add_frame("cam", 31, 300.1, tracked(2, 1), ["person"], predicted=True)
    store.add_frame("cam", 32, 300.2, tracked(4, 1), ["person"])
    store.close()
    assert conn.execute(
        "SELECT track_id, hits, frame_first, frame_last FROM events WHERE id = 3"
    ).fetchall() == [(1, 2, 30, 32)]
    assert conn.execute(
        "SELECT frame_seq, track_id, predicted FROM detections WHERE id > 1 ORDER BY id"
    ).fetchall() == [(30, 1, 0), (31, 1, 1), (32, 1, 0)]
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    # The read side returns the track id: None for the old events.
    assert [(r["uid"], r["track_id"]) for r in query_events(path)][1:] == [
        ("a2", None), ("a1", None)]  # fmt: skip
    assert query_events(path)[0]["track_id"] == 1


def test_reading_a_file_not_yet_migrated_gives_no_track_ids(tmp_path: Path) -> None:
    """The CLI never migrates: on a v2 file (an upgrade before the daemon restarted) it still
    answers, with track_id None."""
    path = tmp_path / "v2.db"
    make_v2(path)
    rows = query_events(path)
    got = [(r["uid"], r["track_id"], r["hits"]) for r in rows]
    assert got == [("a2", None, 2), ("a1", None, 7)]
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 2  # still untouched
    conn.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    EventStore.open(path, cfg(path)).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {LATEST_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError) as err:
        EventStore.open(path, cfg(path))
    message = str(err.value)
    assert str(path) in message and "newer" in message and "\n" not in message
    assert f"v{LATEST_VERSION + 1}" in message


def test_failed_migration_leaves_the_file_at_the_previous_version(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    EventStore.open(path, cfg(path)).close()
    bad = Migration(
        LATEST_VERSION + 1,
        "half done",
        sql("CREATE TABLE extra (x INTEGER)", "CREATE TABLE events (x INTEGER)"),  # fails
    )
    conn = open_writer(path)
    with pytest.raises(StoreError, match=f"v{LATEST_VERSION + 1}"):
        migrate(conn, path, (*MIGRATIONS, bad))
    assert schema_version(conn) == LATEST_VERSION
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'extra'").fetchone() is None
    conn.close()


def test_a_later_migration_is_one_list_entry(tmp_path: Path) -> None:
    """What adding the next migration looks like; existing rows survive it."""
    path = tmp_path / "v1.db"
    make_v1(path)
    zones = Migration(
        LATEST_VERSION + 1,
        "zones",
        sql(
            "CREATE TABLE zones (name TEXT PRIMARY KEY, polygon TEXT NOT NULL)",
            "ALTER TABLE events ADD COLUMN zone TEXT",
        ),
    )
    conn = open_writer(path)
    assert migrate(conn, path, (*MIGRATIONS, zones)) == LATEST_VERSION + 1
    assert conn.execute("SELECT count(*) FROM events WHERE zone IS NULL").fetchone()[0] == 2
    conn.close()


def test_garbage_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    path.write_bytes(b"this is not sqlite, just some bytes " * 200)
    with pytest.raises(StoreError) as err:
        EventStore.open(path, cfg(path))
    message = str(err.value)
    assert message.startswith(str(path)) and "move it aside" in message and "\n" not in message


def test_directory_in_place_of_the_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    path.mkdir()
    with pytest.raises(StoreError, match=re.escape(str(path))):
        EventStore.open(path, cfg(path))


def test_unusable_parent_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    path = blocker / "sub" / "events.db"
    with pytest.raises(StoreError, match="cannot create directory"):
        EventStore.open(path, cfg(path))


def test_someone_elses_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY)")
    conn.close()
    with pytest.raises(StoreError, match="not an edged database"):
        EventStore.open(path, cfg(path))
    conn = sqlite3.connect(path)
    assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master")] == ["photos"]
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # left untouched
    conn.close()

"""Schema versions and migrations, on real files."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from edged.config import StoreConfig
from edged.store import LATEST_VERSION, EventStore, StoreError
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


def make_v1(path: Path, *, table_row: bool = True, user_version: bool = True) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(V1_BY_HAND)
    if table_row:
        conn.execute("INSERT INTO schema_version VALUES (1, 'events and system_events', 1.0)")
    if user_version:
        conn.execute("PRAGMA user_version = 1")
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
    one = Detections(
        np.array([[0, 0, 10, 10]], np.float32), np.array([0.7], np.float32), np.zeros(1, np.int32)
    )
    store.add_frame("cam", 1, 300.0, one, ["person"])
    store.add_system_event("start")
    store.close()
    counts = [
        conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
        for t in ("events", "detections", "system_events")
    ]
    assert counts == [3, 1, 2]
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
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
    """What adding the tracks migration will look like; existing rows survive it."""
    path = tmp_path / "v1.db"
    make_v1(path)
    tracks = Migration(
        LATEST_VERSION + 1,
        "tracks",
        sql(
            "CREATE TABLE tracks (source TEXT NOT NULL, track_id INTEGER NOT NULL,"
            " first_seen REAL NOT NULL, PRIMARY KEY (source, track_id))",
            "ALTER TABLE events ADD COLUMN track_id INTEGER",
        ),
    )
    conn = open_writer(path)
    assert migrate(conn, path, (*MIGRATIONS, tracks)) == LATEST_VERSION + 1
    assert conn.execute("SELECT count(*) FROM events WHERE track_id IS NULL").fetchone()[0] == 2
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

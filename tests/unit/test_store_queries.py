"""Read side: query_events, query_system_events, count_rows, db_info, parse_since."""

from __future__ import annotations

import hashlib
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from edged.config import StoreConfig
from edged.store import (
    LATEST_VERSION,
    EventStore,
    StoreError,
    count_rows,
    db_info,
    parse_since,
    query_events,
    query_system_events,
)
from edged.vision.detections import Detections

NAMES = ["person", "bicycle", "car", "dog"]
T0 = 1_700_000_000.0


def one(class_id: int, track_id: int, x: float = 0.0) -> Detections:
    return Detections(
        np.array([[x, 0, x + 50, 50]], np.float32),
        np.array([0.8], np.float32),
        np.array([class_id], np.int32),
        np.array([track_id], np.int32),
    )


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """Six events: (source, label, first_seen) = cam1/person T0, cam1/dog T0+10, cam2/person
    T0+20, cam1/person T0+30, cam2/car T0+40, cam1/person T0+50 (each seen for 1 s), tracks
    101..106 in that order."""
    path = tmp_path / "events.db"
    store = EventStore.open(path, StoreConfig(path=path, event_gap_s=2))
    plan = [("cam1", 0), ("cam1", 3), ("cam2", 0), ("cam1", 0), ("cam2", 2), ("cam1", 0)]
    for i, (source, cid) in enumerate(plan):
        start = T0 + 10 * i
        store.add_frame(source, 2 * i, start, one(cid, 101 + i), NAMES)
        store.add_frame(source, 2 * i + 1, start + 1, one(cid, 101 + i, 2), NAMES)
    store.add_system_event("start", pid=1)
    store.add_system_event("error", worker="capture")
    store.close()
    return path


def test_newest_first_with_every_column(db: Path) -> None:
    rows = query_events(db)
    assert [r["first_seen"] for r in rows] == [T0 + 50, T0 + 40, T0 + 30, T0 + 20, T0 + 10, T0]
    top = rows[0]
    assert set(top) >= {
        "id",
        "uid",
        "source",
        "label",
        "class_id",
        "first_seen",
        "last_seen",
        "best_score",
        "x1",
        "y1",
        "x2",
        "y2",
        "hits",
        "frame_first",
        "frame_last",
        "track_id",
    }
    assert (top["source"], top["label"], top["hits"], top["last_seen"], top["track_id"]) == (
        "cam1", "person", 2, T0 + 51, 106)  # fmt: skip
    assert [r["track_id"] for r in rows] == [106, 105, 104, 103, 102, 101]


def test_filters_and_limit(db: Path) -> None:
    assert [r["first_seen"] for r in query_events(db, label="person")] == [
        T0 + 50, T0 + 30, T0 + 20, T0]  # fmt: skip
    assert [r["first_seen"] for r in query_events(db, source="cam2")] == [T0 + 40, T0 + 20]
    assert [r["label"] for r in query_events(db, source="cam1", label="dog")] == ["dog"]
    # since: events still being seen at or after it, even if they started before.
    assert [r["first_seen"] for r in query_events(db, since=T0 + 31)] == [
        T0 + 50, T0 + 40, T0 + 30]  # fmt: skip
    assert len(query_events(db, limit=2)) == 2
    assert query_events(db, label="giraffe") == []
    assert query_events(db, limit=0) == []


def test_system_events_and_counts(db: Path) -> None:
    kinds = [r["kind"] for r in query_system_events(db)]
    assert sorted(kinds) == ["error", "start"]
    assert [r["detail"] for r in query_system_events(db, kind="error")] == ['{"worker":"capture"}']
    assert query_system_events(db, since=time.time() + 60) == []
    assert count_rows(db) == {"events": 6, "detections": 0, "system_events": 2}
    info = db_info(db)
    assert info["schema_version"] == LATEST_VERSION and info["bytes"] > 0
    assert info["rows"]["events"] == 6


def test_reading_never_writes_and_never_waits_for_the_writer(db: Path) -> None:
    digest = hashlib.sha256(db.read_bytes()).hexdigest()
    writer = sqlite3.connect(db, isolation_level=None)
    writer.execute("BEGIN EXCLUSIVE")  # the daemon in the middle of a batch
    writer.execute("DELETE FROM events")
    started = time.monotonic()
    assert len(query_events(db)) == 6  # the last committed state
    assert time.monotonic() - started < 1.0
    writer.execute("ROLLBACK")
    writer.close()
    assert hashlib.sha256(db.read_bytes()).hexdigest() == digest


def test_read_only_connection_refuses_writes(db: Path) -> None:
    from edged.store.db import open_reader

    conn = open_reader(db)
    with pytest.raises(sqlite3.OperationalError):
        conn.execute("DELETE FROM events")
    conn.close()


def test_missing_file_is_a_clear_error_and_is_not_created(tmp_path: Path) -> None:
    path = tmp_path / "nope.db"
    with pytest.raises(StoreError, match="no such database"):
        query_events(path)
    with pytest.raises(StoreError):
        count_rows(path)
    assert not path.exists()


def test_file_without_tables_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    sqlite3.connect(path).execute("CREATE TABLE other (x)").connection.close()
    with pytest.raises(StoreError, match="not an edged database"):
        query_events(path)
    assert count_rows(path) == {"events": 0, "detections": 0, "system_events": 0}


@pytest.mark.parametrize(
    ("text", "ago"),
    [("30s", 30), ("10m", 600), ("2h", 7200), ("3d", 259_200), ("1w", 604_800),
     ("1.5h", 5400), (" 10M ", 600), ("5 m", 300)],
)  # fmt: skip
def test_parse_since_durations(text: str, ago: float) -> None:
    assert parse_since(text, now=T0) == pytest.approx(T0 - ago)


def test_parse_since_defaults_to_now() -> None:
    assert parse_since("10m") == pytest.approx(time.time() - 600, abs=5)


def test_parse_since_iso() -> None:
    assert parse_since("2024-05-01T12:00:00Z") == 1_714_564_800
    assert parse_since("2024-05-01T14:00:00+02:00") == 1_714_564_800
    local = datetime(2024, 5, 1, 12, 0, 0).timestamp()  # no offset: local time
    assert parse_since("2024-05-01T12:00:00") == local
    assert parse_since("2024-05-01") == datetime(2024, 5, 1).timestamp()
    assert parse_since("2024-05-01 12:00:00.5+00:00") == pytest.approx(
        datetime(2024, 5, 1, 12, tzinfo=UTC).timestamp() + 0.5
    )


@pytest.mark.parametrize("text", ["", "10", "10x", "-5m", "yesterday", "2024-13-01", "m"])
def test_parse_since_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError, match=r"30s, 10m, 2h, 3d") as err:
        parse_since(text)
    assert repr(text) in str(err.value)

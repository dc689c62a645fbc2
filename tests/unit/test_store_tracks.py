"""The track rule (one event per track), through the real store (events land in a real file)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from edged.config import StoreConfig
from edged.store import EventStore
from edged.store.tracks import TrackEvents
from edged.vision.detections import Detections

NAMES = ["person", "bicycle", "car", "dog"]
T0 = 1_700_000_000.0


def dets(*rows: tuple[float, float, float, float, float, int, int]) -> Detections:
    """rows of (x1, y1, x2, y2, score, class_id, track_id)."""
    if not rows:
        return Detections.empty()
    arr = np.array(rows, dtype=np.float64)
    return Detections(
        arr[:, :4].astype(np.float32),
        arr[:, 4].astype(np.float32),
        arr[:, 5].astype(np.int32),
        arr[:, 6].astype(np.int32),
    )


def events(path: Path) -> list[dict[str, object]]:
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM events ORDER BY id")]
    finally:
        conn.close()


def detection_rows(path: Path) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(
            "SELECT frame_seq, track_id, predicted, x1 FROM detections ORDER BY id"
        ).fetchall()
    finally:
        conn.close()


@pytest.fixture
def store(tmp_path: Path):
    path = tmp_path / "events.db"
    s = EventStore.open(path, StoreConfig(path=path, event_gap_s=2.0))
    yield s
    s.close()


@pytest.fixture
def recording(tmp_path: Path):
    path = tmp_path / "events.db"
    s = EventStore.open(path, StoreConfig(path=path, event_gap_s=2.0, record_detections=True))
    yield s
    s.close()


def test_one_event_per_track_across_many_frames(store: EventStore) -> None:
    scores = [0.5, 0.6, 0.95, 0.7, 0.4, 0.8, 0.6, 0.9, 0.55, 0.6]
    for i, score in enumerate(scores):
        x = 100 + 120 * i  # no overlap frame to frame: a box-overlap rule would split it
        frame = dets((x, 50, x + 100, 250, score, 0, 7))
        store.add_frame("cam", 50 + i, T0 + 0.1 * i, frame, NAMES)
    assert store.commit() == 1
    (row,) = events(store.path)
    assert (row["source"], row["label"], row["track_id"]) == ("cam", "person", 7)
    assert row["hits"] == 10
    assert row["first_seen"] == pytest.approx(T0)
    assert row["last_seen"] == pytest.approx(T0 + 0.9)
    assert (row["frame_first"], row["frame_last"]) == (50, 59)
    # The best box is the one of the best score (frame 2), not the first or the last.
    assert row["best_score"] == pytest.approx(0.95)
    assert (row["x1"], row["y1"], row["x2"], row["y2"]) == pytest.approx((340, 50, 440, 250))
    assert len(str(row["uid"])) == 32
    assert store.committed_events == 1 and store.updated_events == 0


def test_two_tracks_of_the_same_class_side_by_side_are_two_events(store: EventStore) -> None:
    for i in range(10):
        # Overlapping boxes, same class: only the track ids tell them apart.
        frame = dets((10 + i, 10, 110 + i, 210, 0.9, 0, 1), (60 + i, 10, 160 + i, 210, 0.7, 0, 2))
        store.add_frame("cam", i, T0 + 0.1 * i, frame, NAMES)
    store.commit()
    rows = events(store.path)
    assert [(r["track_id"], r["hits"], r["label"]) for r in rows] == [
        (1, 10, "person"), (2, 10, "person")]  # fmt: skip
    assert [r["best_score"] for r in rows] == pytest.approx([0.9, 0.7])


def test_a_track_unseen_past_the_gap_then_seen_again_is_a_new_event(store: EventStore) -> None:
    """An event is one continuous sighting: event_gap_s, not the tracker's max_age, decides how
    long a track may go unseen; a track coasted for longer comes back as a new event (same
    track id, two rows)."""
    box = (100, 100, 200, 300, 0.9, 0, 3)
    store.add_frame("cam", 1, T0, dets(box), NAMES)
    store.add_frame("cam", 2, T0 + 1.9, dets(box), NAMES)  # within the gap: same event
    store.add_frame("cam", 3, T0 + 1.9 + 2.5, dets(box), NAMES)  # unseen 2.5 s > 2 s
    store.commit()
    rows = events(store.path)
    assert [(r["track_id"], r["hits"], r["frame_first"], r["frame_last"]) for r in rows] == [
        (3, 2, 1, 2), (3, 1, 3, 3)]  # fmt: skip
    assert rows[0]["uid"] != rows[1]["uid"]


def test_predicted_frames_neither_create_nor_change_events(recording: EventStore) -> None:
    store = recording
    # A track only ever predicted (never observed in an inferred frame): no event.
    store.add_frame("cam", 1, T0, dets((0, 0, 50, 50, 0.9, 0, 9)), NAMES, predicted=True)
    assert store.open_events == 0
    store.add_frame("cam", 2, T0 + 0.1, dets((100, 0, 200, 100, 0.6, 0, 1)), NAMES)
    # Predicted frames with a higher score and another box: nothing about the event changes,
    # last_seen included (it means last observed).
    for seq in (3, 4, 5):
        guess = dets((300 + seq, 0, 400 + seq, 100, 0.99, 0, 1))
        store.add_frame("cam", seq, T0 + 0.1 * seq, guess, NAMES, predicted=True)
    store.commit()
    (row,) = events(store.path)
    assert (row["track_id"], row["hits"], row["frame_first"], row["frame_last"]) == (1, 1, 2, 2)
    assert row["last_seen"] == pytest.approx(T0 + 0.1)
    assert row["best_score"] == pytest.approx(0.6) and row["x1"] == pytest.approx(100)
    # ... but they are recorded as raw detections, flagged.
    assert detection_rows(store.path) == [
        (1, 9, 1, 0.0),
        (2, 1, 0, 100.0),
        (3, 1, 1, 303.0),
        (4, 1, 1, 304.0),
        (5, 1, 1, 305.0),
    ]
    # The next observation extends the event as usual.
    store.add_frame("cam", 6, T0 + 0.6, dets((110, 0, 210, 100, 0.7, 0, 1)), NAMES)
    store.commit()
    (row,) = events(store.path)
    assert (row["hits"], row["frame_last"], row["best_score"]) == (2, 6, pytest.approx(0.7))


def test_predicted_frames_do_not_keep_an_event_open(store: EventStore) -> None:
    store.add_frame("cam", 1, T0, dets((0, 0, 50, 50, 0.9, 0, 4)), NAMES)
    for seq in range(2, 30):  # coasting for 2.8 s > event_gap_s
        guess = dets((seq, 0, 50 + seq, 50, 0.9, 0, 4))
        store.add_frame("cam", seq, T0 + 0.1 * (seq - 1), guess, NAMES, predicted=True)
    assert store.open_events == 0  # closed by time passing on predicted frames
    store.add_frame("cam", 30, T0 + 2.9, dets((30, 0, 80, 50, 0.9, 0, 4)), NAMES)
    store.commit()
    assert [(r["hits"], r["frame_first"]) for r in events(store.path)] == [(1, 1), (1, 30)]


def test_extension_across_batches_updates_the_row(store: EventStore) -> None:
    store.add_frame("cam", 1, T0, dets((100, 100, 200, 300, 0.6, 0, 1)), NAMES)
    assert store.commit() == 1
    store.add_frame("cam", 2, T0 + 0.1, dets((102, 100, 202, 300, 0.9, 0, 1)), NAMES)
    store.add_frame("cam", 3, T0 + 0.2, dets((104, 100, 204, 300, 0.5, 0, 1)), NAMES)
    assert store.commit() == 1  # one UPDATE for two extensions
    (row,) = events(store.path)
    assert (row["hits"], row["frame_last"], row["track_id"]) == (3, 3, 1)
    assert row["best_score"] == pytest.approx(0.9) and row["x1"] == pytest.approx(102)
    assert store.committed_events == 1 and store.updated_events == 1


def test_sources_never_merge(store: EventStore) -> None:
    box = (100, 100, 200, 300, 0.9)
    for seq in (1, 2):
        # Track ids are per source: the same id on two cameras is two objects.
        store.add_frame("cam1", seq, T0 + seq / 10, dets((*box, 0, 1), (*box, 3, 2)), NAMES)
        store.add_frame("cam2", seq, T0 + seq / 10, dets((*box, 0, 1)), NAMES)
    store.commit()
    got = sorted((r["source"], r["track_id"], r["label"], r["hits"]) for r in events(store.path))
    assert got == [("cam1", 1, "person", 2), ("cam1", 2, "dog", 2), ("cam2", 1, "person", 2)]


def test_a_reused_track_id_with_another_class_is_a_new_event(store: EventStore) -> None:
    store.add_frame("cam", 1, T0, dets((0, 0, 10, 10, 0.9, 0, 1)), NAMES)
    with capture_logs() as logs:
        # Ids started over (inference restarted) and id 1 is now a car.
        store.add_frame("cam", 2, T0 + 0.5, dets((0, 0, 10, 10, 0.9, 2, 1)), NAMES)
    assert [e["event"] for e in logs] == ["store.track_id_reused"]
    store.commit()
    assert [(r["label"], r["track_id"], r["hits"]) for r in events(store.path)] == [
        ("person", 1, 1), ("car", 1, 1)]  # fmt: skip


def test_unknown_class_id_gets_a_placeholder_label(store: EventStore) -> None:
    store.add_frame("cam", 1, T0, dets((0, 0, 10, 10, 0.9, 42, 1)), NAMES)
    store.commit()
    assert events(store.path)[0]["label"] == "class_42"


def test_untracked_detections_are_refused(recording: EventStore) -> None:
    untracked = Detections(
        np.array([[0, 0, 10, 10]], np.float32), np.array([0.9], np.float32), np.zeros(1, np.int32)
    )
    for predicted in (False, True):
        with pytest.raises(ValueError, match=r"track_ids.*edged\.vision\.tracker\.Tracker"):
            recording.add_frame("cam", 1, T0, untracked, NAMES, predicted=predicted)
    marker = Detections(untracked.boxes, untracked.scores, untracked.class_ids,
                        np.full(1, -1, np.int32))  # the result ring's "no track"  # fmt: skip
    with pytest.raises(ValueError, match="track id >= 0"):
        recording.add_frame("cam", 1, T0, marker, NAMES)
    assert recording.buffered_rows == 0 and recording.open_events == 0  # nothing half-applied
    # An empty frame needs no track ids (the result ring hands those over without any).
    recording.add_frame("cam", 2, T0, Detections.empty(), NAMES)
    recording.add_frame("cam", 3, T0, Detections.empty(), NAMES, predicted=True)
    assert recording.buffered_rows == 0


def test_stale_events_close_and_a_stepped_back_clock_closes_them_too() -> None:
    rule = TrackEvents(event_gap_s=1.0)
    rule.observe("cam", 1, T0, dets((0, 0, 10, 10, 0.9, 0, 1)), NAMES)
    rule.observe("cam", 2, T0 + 0.5, dets((50, 0, 60, 10, 0.9, 0, 2)), NAMES)
    assert rule.open_count == 2
    assert rule.expire(T0 + 1.05) == 1  # track 1, last seen at T0
    assert [e.track_id for e in rule.open_events()] == [2]
    assert rule.expire(T0 + 0.5 - 1.5) == 1  # the clock went back 1.5 s > the gap
    assert rule.open_count == 0


def test_observe_returns_each_touched_event_once() -> None:
    rule = TrackEvents(event_gap_s=2.0)
    first = rule.observe("cam", 1, T0, dets((0, 0, 10, 10, 0.9, 0, 1), (50, 0, 60, 10, 0.8, 1, 2)),
                         NAMES)  # fmt: skip
    assert [(e.track_id, e.label, e.hits) for e in first] == [(1, "person", 1), (2, "bicycle", 1)]
    again = rule.observe("cam", 2, T0 + 0.1, dets((1, 0, 11, 10, 0.7, 0, 1)), NAMES)
    assert len(again) == 1 and again[0] is first[0] and again[0].hits == 2
    assert rule.observe("cam", 3, T0 + 0.2, dets((1, 0, 11, 10, 0.7, 0, 1)), NAMES,
                        predicted=True) == []  # fmt: skip

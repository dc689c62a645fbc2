"""The interim event rule, through the real store (events land in a real SQLite file)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from edged.config import StoreConfig
from edged.store import EventStore
from edged.store.rule import EventRule, iou_matrix
from edged.vision.detections import Detections

NAMES = ["person", "bicycle", "car", "dog"]
T0 = 1_700_000_000.0


def dets(*rows: tuple[float, float, float, float, float, int]) -> Detections:
    """rows of (x1, y1, x2, y2, score, class_id)."""
    if not rows:
        return Detections.empty()
    arr = np.array(rows, dtype=np.float64)
    return Detections(
        arr[:, :4].astype(np.float32), arr[:, 4].astype(np.float32), arr[:, 5].astype(np.int32)
    )


def events(path: Path) -> list[dict[str, object]]:
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM events ORDER BY id")]
    finally:
        conn.close()


@pytest.fixture
def store(tmp_path: Path):
    path = tmp_path / "events.db"
    cfg = StoreConfig(path=path, event_gap_s=2.0, event_iou=0.3)
    s = EventStore.open(path, cfg)
    yield s
    s.close()


def test_person_walking_across_ten_frames_is_one_event(store: EventStore) -> None:
    for i in range(10):
        x = 100 + 10 * i
        store.add_frame("cam", 50 + i, T0 + 0.1 * i, dets((x, 50, x + 100, 250, 0.8, 0)), NAMES)
    assert store.commit() == 1
    (row,) = events(store.path)
    assert row["label"] == "person" and row["class_id"] == 0 and row["source"] == "cam"
    assert row["hits"] == 10
    assert row["first_seen"] == pytest.approx(T0)
    assert row["last_seen"] == pytest.approx(T0 + 0.9)
    assert (row["frame_first"], row["frame_last"]) == (50, 59)
    assert len(str(row["uid"])) == 32
    assert store.committed_events == 1 and store.updated_events == 0


def test_two_far_apart_people_are_two_events(store: EventStore) -> None:
    for i in range(10):
        frame = dets((10 + i, 10, 110 + i, 210, 0.9, 0), (800 + i, 10, 900 + i, 210, 0.7, 0))
        store.add_frame("cam", i, T0 + 0.1 * i, frame, NAMES)
    store.commit()
    rows = events(store.path)
    assert len(rows) == 2
    assert [r["hits"] for r in rows] == [10, 10]
    assert sorted(r["x1"] for r in rows) == pytest.approx([10.0, 800.0])


def test_gap_longer_than_event_gap_starts_a_new_event(store: EventStore) -> None:
    box = (100, 100, 200, 300, 0.9, 0)
    store.add_frame("cam", 1, T0, dets(box), NAMES)
    store.add_frame("cam", 2, T0 + 1.9, dets(box), NAMES)  # within the gap: same event
    store.add_frame("cam", 3, T0 + 1.9 + 2.5, dets(box), NAMES)  # unseen 2.5 s > 2 s
    store.commit()
    rows = events(store.path)
    assert [(r["hits"], r["frame_first"], r["frame_last"]) for r in rows] == [(2, 1, 2), (1, 3, 3)]


def test_best_box_follows_best_score(store: EventStore) -> None:
    scores = [0.5, 0.6, 0.95, 0.7, 0.4]
    for i, score in enumerate(scores):
        x = 100 + 5 * i
        store.add_frame("cam", i, T0 + 0.1 * i, dets((x, 100, x + 100, 300, score, 0)), NAMES)
    store.commit()
    (row,) = events(store.path)
    assert row["best_score"] == pytest.approx(0.95)
    assert (row["x1"], row["y1"], row["x2"], row["y2"]) == pytest.approx((110, 100, 210, 300))


def test_extension_across_batches_updates_the_row(store: EventStore) -> None:
    box = (100, 100, 200, 300, 0.6, 0)
    store.add_frame("cam", 1, T0, dets(box), NAMES)
    assert store.commit() == 1
    store.add_frame("cam", 2, T0 + 0.1, dets((102, 100, 202, 300, 0.9, 0)), NAMES)
    store.add_frame("cam", 3, T0 + 0.2, dets((104, 100, 204, 300, 0.5, 0)), NAMES)
    assert store.commit() == 1  # one UPDATE for two extensions
    (row,) = events(store.path)
    assert (row["hits"], row["frame_last"]) == (3, 3)
    assert row["best_score"] == pytest.approx(0.9) and row["x1"] == pytest.approx(102)
    assert store.committed_events == 1 and store.updated_events == 1


def test_labels_and_sources_never_merge(store: EventStore) -> None:
    box = (100, 100, 200, 300)
    store.add_frame("cam1", 1, T0, dets((*box, 0.9, 0), (*box, 0.9, 3)), NAMES)
    store.add_frame("cam2", 1, T0, dets((*box, 0.9, 0)), NAMES)
    store.add_frame("cam1", 2, T0 + 0.1, dets((*box, 0.9, 0), (*box, 0.9, 3)), NAMES)
    store.add_frame("cam2", 2, T0 + 0.1, dets((*box, 0.9, 0)), NAMES)
    store.commit()
    got = sorted((r["source"], r["label"], r["hits"]) for r in events(store.path))
    assert got == [("cam1", "dog", 2), ("cam1", "person", 2), ("cam2", "person", 2)]


def test_unknown_class_id_gets_a_placeholder_label(store: EventStore) -> None:
    store.add_frame("cam", 1, T0, dets((0, 0, 10, 10, 0.9, 42)), NAMES)
    store.commit()
    assert events(store.path)[0]["label"] == "class_42"


def test_greedy_matching_one_detection_per_event_per_frame() -> None:
    rule = EventRule(event_iou=0.3, event_gap_s=2.0)
    rule.observe("cam", 1, T0, dets((0, 0, 100, 100, 0.9, 0)), NAMES)
    # Two detections overlap the single open event: the better one extends it, the other is new.
    touched = rule.observe(
        "cam", 2, T0 + 0.1, dets((40, 0, 140, 100, 0.9, 0), (5, 0, 105, 100, 0.8, 0)), NAMES
    )
    assert len(touched) == 2 and rule.open_count == 2
    extended = [e for e in touched if e.hits == 2]
    assert len(extended) == 1 and extended[0].last_box == (5.0, 0.0, 105.0, 100.0)


def test_greedy_matching_one_event_per_detection() -> None:
    rule = EventRule(event_iou=0.3, event_gap_s=2.0)
    rule.observe("cam", 1, T0, dets((0, 0, 100, 100, 0.9, 0), (60, 0, 160, 100, 0.9, 0)), NAMES)
    # One detection between both events: only the higher-IoU event is extended.
    touched = rule.observe("cam", 2, T0 + 0.1, dets((50, 0, 150, 100, 0.9, 0)), NAMES)
    assert len(touched) == 1 and touched[0].hits == 2
    assert touched[0].first_seen == T0 and touched[0].last_box[0] == 50.0
    hits = sorted(e.hits for e in rule.open_events())
    assert hits == [1, 2]
    assert touched[0] is next(e for e in rule.open_events() if e.best_box[0] == 60.0)


def test_low_iou_starts_a_new_event_and_stale_events_close() -> None:
    rule = EventRule(event_iou=0.5, event_gap_s=1.0)
    rule.observe("cam", 1, T0, dets((0, 0, 100, 100, 0.9, 0)), NAMES)
    rule.observe("cam", 2, T0 + 0.1, dets((60, 0, 160, 100, 0.9, 0)), NAMES)  # IoU 0.25
    assert rule.open_count == 2
    assert rule.expire(T0 + 1.05) == 1  # the first one, last seen at T0
    assert rule.expire(T0 + 5.0) == 1
    assert rule.open_count == 0


def test_iou_matrix() -> None:
    a = np.array([[0, 0, 10, 10], [0, 0, 0, 0]], np.float32)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], np.float32)
    got = iou_matrix(a, b)
    assert got.shape == (2, 3)
    assert got[0] == pytest.approx([1.0, 50 / 150, 0.0])
    assert got[1] == pytest.approx([0.0, 0.0, 0.0])

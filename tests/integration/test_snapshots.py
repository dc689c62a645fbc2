"""Snapshots on real frames and real files: the inference half (SnapshotWriter) and the sink
half (EventStore + SnapshotStore) meet through the file name only; retention deletes the
files with their rows; `edged events --snapshot ID` prints the path."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edged.config import SnapshotConfig, StoreConfig
from edged.store import EventStore
from edged.store.outbox import Outbox
from edged.store.snapshots import PENDING, SnapshotStore, SnapshotWriter, pending_path
from edged.uplink.messages import event_payload
from edged.vision.detections import Detections

NAMES = ["person", "bicycle", "car"]


@pytest.fixture(scope="module")
def frames(sample_video: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(sample_video))
    out = []
    while len(out) < 12:
        ok, image = cap.read()
        assert ok
        out.append(image)
    cap.release()
    return out


def person(track_id: int, score: float, x: float = 300.0) -> Detections:
    return Detections(np.array([[x, 100, x + 60, 260]], np.float32),
                      np.array([score], np.float32), np.zeros(1, np.int32),
                      np.array([track_id], np.int32))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_writer_keeps_the_best_frame_rate_limited(tmp_path: Path,
                                                  frames: list[np.ndarray]) -> None:
    clock = Clock()
    writer = SnapshotWriter(SnapshotConfig(dir=tmp_path, max_per_s=2.0, min_gain=0.05),
                            event_gap_s=2.0, clock=clock)
    t0 = 1_700_000_000.0
    assert writer.offer(frames[0], t0, "cam", person(5, 0.60), NAMES) == 1
    path = pending_path(tmp_path, "cam", 5, t0)
    first = path.read_bytes()
    assert writer.offer(frames[1], t0 + 0.1, "cam", person(5, 0.62), NAMES) == 0  # < min_gain
    assert writer.offer(frames[2], t0 + 0.2, "cam", person(5, 0.70), NAMES) == 1  # better
    assert path.read_bytes() != first
    # Burst of 2 spent: a better score waits for a token (rate limit), then gets written.
    assert writer.offer(frames[3], t0 + 0.3, "cam", person(5, 0.90), NAMES) == 0
    assert writer.deferred == 1
    clock.now += 0.5
    assert writer.offer(frames[4], t0 + 0.8, "cam", person(5, 0.90), NAMES) == 1
    # Unseen for longer than the gap: a new event, a new file, even with a lower score.
    clock.now += 10
    assert writer.offer(frames[5], t0 + 5.0, "cam", person(5, 0.55), NAMES) == 1
    assert pending_path(tmp_path, "cam", 5, t0 + 5.0).exists()
    image = cv2.imread(str(path))
    assert image is not None and image.shape == frames[0].shape  # style box: the whole frame
    assert writer.written == 4
    assert not list(tmp_path.rglob("*.tmp"))  # atomic replace leaves nothing behind


def test_crop_style_writes_the_object_only(tmp_path: Path, frames: list[np.ndarray]) -> None:
    writer = SnapshotWriter(SnapshotConfig(dir=tmp_path, style="crop", crop_margin=0.5), 2.0)
    before = frames[0].copy()
    writer.offer(frames[0], 1.0, "cam", person(1, 0.8), NAMES)
    crop = cv2.imread(str(pending_path(tmp_path, "cam", 1, 1.0)))
    assert crop is not None and crop.shape[:2] == (320, 120)  # 160x60 box, +50 % each side
    assert np.array_equal(frames[0], before)  # the pipeline's frame is never drawn on


def test_ended_events_get_their_snapshot_and_retention_deletes_it(
        tmp_path: Path, frames: list[np.ndarray]) -> None:
    snaps = SnapshotConfig(enabled=True, dir=tmp_path / "snapshots", max_per_s=30)
    db = tmp_path / "events.db"
    store = EventStore.open(db, StoreConfig(path=db, event_gap_s=1.0, retention_days=1),
                            snapshots=SnapshotStore(snaps))
    writer = SnapshotWriter(snaps, event_gap_s=1.0)
    old = time.time() - 3 * 86_400
    # What the inference worker and the sink each do with the same emitted frames.
    for i, wall in enumerate((old, old + 0.2, old + 0.4)):
        dets = person(1, 0.5 + 0.1 * i)
        writer.offer(frames[i], wall, "cam", dets, NAMES)
        store.add_frame("cam", i, wall, dets, NAMES)
    recent = time.time()
    dets = person(2, 0.9, x=100)
    writer.offer(frames[3], recent, "cam", dets, NAMES)
    store.add_frame("cam", 3, recent, dets, NAMES)  # track 1's event ends here
    store.commit()
    conn = sqlite3.connect(db)
    [(uid, snapshot)] = conn.execute(
        "SELECT uid, snapshot FROM events WHERE snapshot IS NOT NULL").fetchall()
    assert Path(snapshot).parent.parent == snaps.dir and Path(snapshot).name == f"{uid}.jpg"
    assert cv2.imread(snapshot) is not None
    assert not list((snaps.dir / PENDING).rglob("1-*.jpg"))  # claimed, not copied
    # The uplink's message carries the path.
    outbox = Outbox.open(db)
    assert outbox is not None
    [row] = outbox.pending(10, final_only=True)
    assert b'"snapshot":"' + snapshot.encode() + b'"' in event_payload(row, "dev")
    outbox.close()
    # Retention by age removes the row and, through the trigger, the file.
    assert store.prune(time.time()) == 1
    assert not Path(snapshot).exists()
    assert conn.execute("SELECT count(*) FROM snapshot_trash").fetchone()[0] == 0
    store.close()  # ends track 2's event: it gets its snapshot too
    assert conn.execute("SELECT count(*) FROM events WHERE snapshot IS NOT NULL"
                        ).fetchone()[0] == 1
    conn.close()


def test_size_cap_deletes_the_oldest_snapshots(tmp_path: Path,
                                               frames: list[np.ndarray]) -> None:
    snaps = SnapshotConfig(enabled=True, dir=tmp_path / "snapshots", max_per_s=30)
    db = tmp_path / "events.db"
    store = EventStore.open(db, StoreConfig(path=db, event_gap_s=0.5),
                            snapshots=SnapshotStore(snaps))
    writer = SnapshotWriter(snaps, event_gap_s=0.5)
    now = time.time() - 100
    for i in range(8):  # eight one-frame events, one after the other
        dets = person(i + 1, 0.8)
        writer.offer(frames[i], now + i, "cam", dets, NAMES)
        store.add_frame("cam", i, now + i, dets, NAMES)
    store.close()
    files = sorted((snaps.dir).glob("????-??-??/*.jpg"), key=os.path.getmtime)
    assert len(files) == 8
    size = sum(f.stat().st_size for f in files)
    capped = SnapshotStore(snaps.model_copy(update={"max_mb": size * 0.6 / 2**20}))
    conn = sqlite3.connect(db, isolation_level=None)
    assert capped.collect(conn, retention_days=30, now_wall=time.time()) >= 3
    kept = conn.execute("SELECT track_id FROM events WHERE snapshot IS NOT NULL"
                        " ORDER BY track_id").fetchall()
    conn.close()
    assert kept and kept[-1] == (8,) and (1,) not in kept  # the oldest went first
    assert sum(f.stat().st_size for f in snaps.dir.glob("????-??-??/*.jpg")) <= size * 0.6


def test_cli_prints_the_snapshot_path(tmp_path: Path, frames: list[np.ndarray]) -> None:
    snaps = SnapshotConfig(enabled=True, dir=tmp_path / "snapshots")
    db = tmp_path / "events.db"
    store = EventStore.open(db, StoreConfig(path=db), snapshots=SnapshotStore(snaps))
    writer = SnapshotWriter(snaps, event_gap_s=2.0)
    wall = time.time()
    for track, score in ((1, 0.9), (2, 0.4)):
        dets = person(track, score, x=100.0 * track)
        if track == 1:
            writer.offer(frames[0], wall, "cam", dets, NAMES)  # track 2 never got a JPEG
        store.add_frame("cam", track, wall, dets, NAMES)
    store.close()
    conn = sqlite3.connect(db)
    (with_id, uid, path), (without_id,) = conn.execute(
        "SELECT id, uid, snapshot FROM events WHERE track_id = 1").fetchone(), conn.execute(
        "SELECT id FROM events WHERE track_id = 2").fetchone()
    conn.close()

    def edged(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "edged", "events", "--db", str(db), *args],
                              capture_output=True, text=True, timeout=60)

    for ref in (str(with_id), uid):
        shown = edged("--snapshot", ref)
        assert shown.returncode == 0 and shown.stdout.strip() == path
    missing = edged("--snapshot", str(without_id))
    assert missing.returncode == 66 and "has none" in missing.stderr
    assert edged("--snapshot", "999").returncode == 66
    listed = edged("--min-score", "0.5", "--csv")
    lines = listed.stdout.strip().splitlines()
    assert listed.returncode == 0 and lines[0].startswith("id,uid,") and len(lines) == 2
    assert path in lines[1]


def test_events_filters_until_and_min_score(tmp_path: Path) -> None:
    """`edged events` polish that came with snapshots: --until, --min-score, --csv."""
    from edged.store.queries import query_events

    db = tmp_path / "events.db"
    store = EventStore.open(db, StoreConfig(path=db, event_gap_s=1.0))
    now = time.time()
    for track, (ago, score) in enumerate(((3600, 0.9), (1800, 0.4), (60, 0.7)), start=1):
        store.add_frame("cam", track, now - ago, person(track, score), NAMES)
    store.close()
    firsts = [round(now - r["first_seen"]) for r in query_events(db, until=now - 600)]
    assert firsts == [1800, 3600]
    assert [round(r["best_score"], 1) for r in query_events(db, min_score=0.6)] == [0.7, 0.9]
    assert len(query_events(db, since=now - 2000, until=now - 600)) == 1

    def edged(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "edged", "events", "--db", str(db), *args],
                              capture_output=True, text=True, timeout=60)

    ranged = edged("--since", "40m", "--until", "10m", "--csv")
    assert ranged.returncode == 0 and len(ranged.stdout.strip().splitlines()) == 2
    assert edged("--until", "yesterday-ish").returncode == 64
    both = edged("--csv", "--json")
    assert both.returncode == 2 and "not allowed with" in both.stderr

"""The real daemon against storage faults: a database at its size cap, and one locked by
another process. It keeps running, loses nothing it promised to keep, and the file stays
intact."""

from __future__ import annotations

import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from edged.store.db import file_bytes
from tests.integration.conftest import Daemon
from tests.unit.test_store_faults import hold_lock

CAP_MB = 0.2
FRAMES = 300
# Infer every frame (no fps cap, no frame-skip, no load shedding on a busy test machine): the
# amount of data, and so how often the cap is hit, must not depend on the machine's speed.
EVERY_FRAME = {"name": "high", "input_size": 416, "fps": 240, "frame_skip": 1, "conf": 0.5}
THERMAL = {
    "load_shedding": False,
    "modes": [EVERY_FRAME, {**EVERY_FRAME, "name": "medium"}, {**EVERY_FRAME, "name": "low"}],
}


def _rows(db: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return conn.execute(sql).fetchall()


def _sink_pids(daemon: Daemon) -> list[int]:
    return [e["pid"] for e in daemon.find("worker.spawned") if e["worker"] == "sink"]


@pytest.mark.slow
def test_a_tiny_cap_prunes_the_oldest_and_the_run_completes(
    pipeline_config: Callable[..., Path], daemons: list[Daemon], tmp_path: Path
) -> None:
    db = tmp_path / "events.db"
    config = pipeline_config(store={"max_db_mb": CAP_MB, "record_detections": True},
                             thermal=THERMAL)  # fmt: skip
    daemon = Daemon(config, "--max-frames", str(FRAMES))
    daemons.append(daemon)
    assert daemon.wait(240) == 0, daemon.log_path.read_text()[-3000:]
    ended = time.time()

    full = daemon.find("store.full")
    assert full and all(e["level"] == "error" for e in full)
    assert not daemon.find("sink.store_failed")  # every full commit succeeded after pruning
    assert len(_sink_pids(daemon)) == 1
    assert _rows(db, "PRAGMA integrity_check") == [("ok",)]
    assert file_bytes(db) <= CAP_MB * 2**20  # the file and its WAL (gone at close)

    stopped = daemon.find("inference.stopped")[0]
    assert stopped["inferred"] == FRAMES
    emitted = stopped["detections_emitted"]
    count, first_seq, last_seq = _rows(
        db, "SELECT count(*), min(frame_seq), max(frame_seq) FROM detections"
    )[0]
    last_seen, last_frame, first_ended = _rows(
        db, "SELECT max(last_seen), max(frame_last), min(frame_last) FROM events"
    )[0]
    pruned = _rows(
        db,
        "SELECT sum(json_extract(detail, '$.pruned')) FROM system_events"
        " WHERE kind = 'error' AND json_extract(detail, '$.what') = 'database full'",
    )[0][0]
    print(f"{len(full)} x store.full, {pruned} rows pruned, {count} of {emitted} detections "
          f"kept (frames {first_seq}..{last_seq}), db {db.stat().st_size} B")  # fmt: skip
    assert emitted > count > 0  # more was detected than fits ...
    assert last_seq >= FRAMES - 5 and last_frame >= FRAMES - 5  # ... the newest rows are there ...
    assert ended - last_seen < 30
    # ... and the earliest are gone (events by when they were last seen: one that started in
    # the first frames and is still being seen stays).
    assert first_seq > 50 and first_ended > 50
    assert pruned > 0
    # One event per track: every event and every detection carries its track id.
    assert _rows(db, "SELECT count(*) FROM events WHERE track_id IS NULL") == [(0,)]
    assert _rows(db, "SELECT count(*) FROM detections WHERE track_id IS NULL") == [(0,)]


@pytest.mark.slow
def test_a_lock_held_by_another_process_loses_nothing(
    pipeline_config: Callable[..., Path], daemons: list[Daemon], tmp_path: Path
) -> None:
    db = tmp_path / "events.db"
    config = pipeline_config(
        source={"mode": "paced", "loop": True, "fps": 30},
        store={"record_detections": True},
    )
    daemon = Daemon(config)
    daemons.append(daemon)
    daemon.wait_for(lambda: bool(daemon.find("supervisor.ready")), 60, "first inference")
    daemon.wait_for(lambda: _rows(db, "SELECT count(*) FROM detections")[0][0] > 0, 30,
                    "a first commit")  # fmt: skip
    started = time.monotonic()
    locker = hold_lock(db, 3.0)
    assert locker.wait(30) == 0
    held = time.monotonic() - started
    daemon.wait_for(lambda: bool(daemon.find("store.unlocked")), 60, "a commit after the lock")
    assert daemon.proc.poll() is None
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.wait(60) == 0, daemon.log_path.read_text()[-3000:]

    assert len(_sink_pids(daemon)) == 1  # the sink was never restarted
    locked = daemon.find("store.locked")
    unlocked = daemon.find("store.unlocked")
    assert len(locked) == 1 and locked[0]["level"] == "warning"  # once for the episode
    # From the sink's first blocked attempt (up to one commit interval after the lock was
    # taken) to the commit that got through (at most one back-off step after it went).
    assert len(unlocked) == 1 and 1.0 <= unlocked[0]["waited_s"] <= held + 31
    assert not daemon.find("sink.store_failed") and not daemon.find("worker.restarting")
    print(f"lock held {held:.1f} s; the sink waited {unlocked[0]['waited_s']} s over "
          f"{unlocked[0]['attempts']} attempts")  # fmt: skip
    emitted = daemon.find("inference.stopped")[0]["detections_emitted"]
    assert emitted > 0
    assert _rows(db, "SELECT count(*) FROM detections")[0][0] == emitted
    # Events come from observations only: each detection of an inferred frame is one hit of
    # its track's event, and predicted frames (kept as detections) add none.
    observed = _rows(db, "SELECT count(*) FROM detections WHERE predicted = 0")[0][0]
    assert _rows(db, "SELECT sum(hits) FROM events")[0][0] == observed
    assert _rows(db, "SELECT count(*) FROM events WHERE track_id IS NULL") == [(0,)]
    assert _rows(db, "PRAGMA integrity_check") == [("ok",)]

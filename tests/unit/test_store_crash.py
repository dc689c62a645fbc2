"""A writer killed with SIGKILL mid-batch: the file stays intact, committed rows all survive.

(SIGKILL does not drop the OS page cache the way a power cut does; durability across a power
cut rests on synchronous=FULL + WAL, which the connection tests check are set.)
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PRELUDE = """
import sys
from pathlib import Path
import numpy as np
import structlog
from edged.config import StoreConfig
from edged.store import EventStore
from edged.vision.detections import Detections

structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))  # stdout: ours
path = Path(sys.argv[1])
cfg = StoreConfig(path=path, commit_interval_s=60, commit_max_rows=100_000,
                  record_detections=True, event_gap_s=0.5)
store = EventStore.open(path, cfg)
seq = 0

def batch(frames):
    # Every frame starts a new event (track id = frame) + 1 detection.
    global seq
    for _ in range(frames):
        seq += 1
        one = Detections(np.array([[0, 0, 50, 50]], np.float32), np.array([0.9], np.float32),
                         np.zeros(1, np.int32), np.array([seq], np.int32))
        store.add_frame("cam", seq, 1.7e9 + seq, one, ["person"])
"""

# Batch 1 is committed; batch 2 is large and is being written when the parent kills us.
MID_BATCH = (
    PRELUDE
    + """
batch(200)
store.commit()
print("committed", flush=True)
batch(20_000)
store._conn.execute("PRAGMA cache_size = 20")  # spill uncommitted pages into the WAL early
print("committing", flush=True)
store.commit()
print("done", flush=True)
"""
)

# Commits batches back to back; the parent kills it at an arbitrary moment.
LOOP = (
    PRELUDE
    + """
while True:
    batch(50)
    store.commit()
    print(seq, flush=True)
"""
)


def start(script: str, path: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", script, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=ROOT,
    )


def kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def reopen(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path)  # recovers the WAL like the daemon would at its next start
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    return conn


def wait_for(proc: subprocess.Popen[str], line: str) -> None:
    assert proc.stdout is not None
    got = proc.stdout.readline().strip()
    assert got == line, f"child said {got!r}, expected {line!r}"


def test_sigkill_during_a_batch_keeps_the_committed_one(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    proc = start(MID_BATCH, path)
    try:
        wait_for(proc, "committed")
        wait_for(proc, "committing")
        time.sleep(0.05)  # well inside the 40 000-row transaction
    finally:
        kill(proc)
    assert proc.stdout is not None
    assert proc.stdout.read() == "", "the batch finished before the kill; make it larger"
    wal = Path(f"{path}-wal")
    assert wal.exists() and wal.stat().st_size > 0  # the killed writer left its WAL behind
    conn = reopen(path)
    count, first, last = conn.execute(
        "SELECT count(*), min(frame_first), max(frame_first) FROM events"
    ).fetchone()
    detections = conn.execute("SELECT count(*) FROM detections").fetchone()[0]
    conn.close()
    # All of batch 1, nothing of the interrupted batch 2.
    assert (count, first, last, detections) == (200, 1, 200, 200)


@pytest.mark.parametrize("delay_s", [0.0, 0.013, 0.031, 0.077])
def test_sigkill_at_any_moment_loses_no_committed_batch(tmp_path: Path, delay_s: float) -> None:
    path = tmp_path / "events.db"
    proc = start(LOOP, path)
    assert proc.stdout is not None
    try:
        reported = [int(proc.stdout.readline()) for _ in range(5)]
        time.sleep(delay_s)
    finally:
        kill(proc)
    conn = reopen(path)
    count = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    detections = conn.execute("SELECT count(*) FROM detections").fetchone()[0]
    seqs = [r[0] for r in conn.execute("SELECT frame_first FROM events ORDER BY id")]
    tracks = [r[0] for r in conn.execute("SELECT track_id FROM events ORDER BY id")]
    conn.close()
    assert count >= reported[-1]  # every batch reported as committed is there
    assert count % 50 == 0  # and no batch is there in part
    assert detections == count
    assert seqs == tracks == list(range(1, count + 1))

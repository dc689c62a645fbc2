"""The whole daemon with snapshots on: every event gets the JPEG of its best frame."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import cv2

from tests.integration.conftest import Daemon


def test_every_event_of_a_run_gets_a_snapshot(
    pipeline_config: Callable[..., Path], daemons: list[Daemon], tmp_path: Path,
) -> None:
    snaps = tmp_path / "snapshots"
    config = pipeline_config(model={"input_size": 320}, store={"event_gap_s": 0.5},
                             snapshots={"enabled": True, "dir": str(snaps), "max_per_s": 5})
    daemon = Daemon(config, "--max-frames", "40")
    daemons.append(daemon)
    assert daemon.wait(180) == 0
    conn = sqlite3.connect(tmp_path / "events.db")
    rows = conn.execute("SELECT id, snapshot, x2 - x1 FROM events").fetchall()
    conn.close()
    assert rows and all(path for _, path, _ in rows)
    for _, path, _ in rows:
        image = cv2.imread(path)
        assert image is not None and image.shape == (576, 768, 3)  # style box: whole frame
        assert Path(path).parent.parent == snaps
    assert not list((snaps / "pending").rglob("*.jpg"))  # every one claimed
    shown = subprocess.run([sys.executable, "-m", "edged", "events", "--db",
                            str(tmp_path / "events.db"), "--snapshot", str(rows[0][0])],
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and shown.stdout.strip() == rows[0][1]

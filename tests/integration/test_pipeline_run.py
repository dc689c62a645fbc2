"""The real daemon on the real sample video: events land in SQLite, shutdown loses nothing."""

from __future__ import annotations

import os
import signal
import sqlite3
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from tests.integration.conftest import Daemon

FRAME_W, FRAME_H = 768, 576


def _rows(db: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return conn.execute(sql).fetchall()


def _leftover_segments(pid: int) -> list[str]:
    return [name for name in os.listdir("/dev/shm") if name.startswith(f"edged.{pid}-")]


@pytest.mark.slow
def test_lossless_run_finds_people_in_the_sample_video(
    pipeline_config: Callable[..., Path], daemons: list[Daemon], tmp_path: Path
) -> None:
    config = pipeline_config()
    daemon = Daemon(config, "--max-frames", "300")
    daemons.append(daemon)
    assert daemon.wait(240) == 0, daemon.log_path.read_text()[-3000:]
    persons = _rows(tmp_path / "events.db",
                    "SELECT x1, y1, x2, y2, best_score FROM events WHERE label = 'person'")
    print(f"person events: {len(persons)}")
    assert len(persons) >= 20
    for x1, y1, x2, y2, score in persons:
        assert 0 <= x1 < x2 <= FRAME_W and 0 <= y1 < y2 <= FRAME_H
        assert (y2 - y1) > (x2 - x1), "a pedestrian's box is taller than wide"
        assert score >= 0.5
    stopped = daemon.find("inference.stopped")[0]
    assert stopped["inferred"] == 300, "lossless mode infers every frame"
    assert _leftover_segments(daemon.proc.pid) == []


@pytest.mark.slow
def test_sigterm_commits_every_emitted_detection(
    pipeline_config: Callable[..., Path], daemons: list[Daemon], tmp_path: Path
) -> None:
    config = pipeline_config(
        source={"mode": "paced", "loop": True, "fps": 30},
        store={"record_detections": True, "commit_interval_s": 5.0},
    )
    daemon = Daemon(config)
    daemons.append(daemon)
    daemon.wait_for(lambda: bool(daemon.find("supervisor.ready")), 60, "first inference")
    # spawn also starts multiprocessing's resource tracker; the workers carry our titles.
    cmdlines = [" ".join(child.cmdline()).strip()
                for child in psutil.Process(daemon.proc.pid).children()]
    titles = sorted(line for line in cmdlines if "resource_tracker" not in line)
    assert titles == ["edged: capture", "edged: inference", "edged: sink"]
    daemon.wait_for(lambda: len(daemon.find("status")) >= 3, 60, "a few status lines")
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.wait(30) == 0
    emitted = daemon.find("inference.stopped")[0]["detections_emitted"]
    db = tmp_path / "events.db"
    assert emitted > 0
    assert _rows(db, "SELECT count(*) FROM detections")[0][0] == emitted
    assert _rows(db, "PRAGMA integrity_check") == [("ok",)]
    assert _rows(db, "SELECT count(*) FROM events")[0][0] > 0
    assert _leftover_segments(daemon.proc.pid) == []
    status = daemon.find("status")[-1]
    assert {"fps_in", "fps_out", "drops", "infer_ms"} <= status.keys()

"""Two sources at once (the sample video twice, one with an ROI): one capture worker each,
events carry their source, and the ROI holds."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil
import pytest
import yaml

from edged.vision.roi import inside_roi
from tests.integration.conftest import Daemon

pytestmark = pytest.mark.slow

# The left half of the 768x576 frame, minus a margin at the top.
ROI = [[0, 100], [384, 100], [384, 576], [0, 576]]


def test_two_sources_one_with_roi(
    pipeline_config: Callable[..., Path], daemons: list[Daemon], tmp_path: Path,
    sample_video: Path,
) -> None:
    config = pipeline_config(store={"record_detections": True})
    doc = yaml.safe_load(config.read_text())
    full = {**doc.pop("source"), "name": "full"}
    doc["sources"] = [full, {**full, "name": "left", "roi": ROI}]
    config.write_text(yaml.safe_dump(doc))
    daemon = Daemon(config, "--max-frames", "80")
    daemons.append(daemon)
    daemon.wait_for(lambda: bool(daemon.find("supervisor.ready")), 90, "ready")
    titles = sorted(" ".join(c.cmdline()).strip() for c in
                    psutil.Process(daemon.proc.pid).children() if "edged:" in " ".join(c.cmdline()))
    assert titles == ["edged: capture", "edged: capture-1", "edged: inference", "edged: sink"]
    assert daemon.wait(300) == 0, daemon.log_path.read_text()[-3000:]

    with sqlite3.connect(tmp_path / "events.db") as conn:
        events = conn.execute("SELECT source, x1, y1, x2, y2 FROM events").fetchall()
        dets = conn.execute("SELECT source, x1, y1, x2, y2 FROM detections").fetchall()
    by_source = {name: np.array([row[1:] for row in events if row[0] == name], np.float32)
                 for name in ("full", "left")}
    print({name: len(boxes) for name, boxes in by_source.items()})
    assert {row[0] for row in events} == {"full", "left"}
    left_dets = np.array([row[1:] for row in dets if row[0] == "left"], np.float32)
    assert len(left_dets) and inside_roi(left_dets, ROI).all(), "every left detection in ROI"
    full_dets = np.array([row[1:] for row in dets if row[0] == "full"], np.float32)
    assert not inside_roi(full_dets, ROI).all(), "the full source also sees the right half"
    assert len(by_source["left"]) < len(by_source["full"])
    stopped = daemon.find("inference.stopped")[0]
    assert stopped["inferred"] + stopped["predicted"] == 160, "both sources, every frame"

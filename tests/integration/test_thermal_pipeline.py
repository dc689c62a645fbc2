"""The thermal governor on the real pipeline, with a fake sysfs thermal zone the test heats."""

from __future__ import annotations

import json
import signal
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import Daemon

pytestmark = pytest.mark.slow


def _zone(root: Path) -> Path:
    zone = root / "class" / "thermal" / "thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "type").write_text("cpu-thermal\n")
    return zone / "temp"


def test_steps_down_the_ladder_pauses_at_critical_and_recovers(
    pipeline_config: Callable[..., Path], daemons: list[Daemon], tmp_path: Path
) -> None:
    temp = _zone(tmp_path / "sys")
    temp.write_text("50000\n")
    config = pipeline_config(
        source={"mode": "paced", "loop": True, "fps": 30},
        daemon={"status_interval_s": 0.5},
        thermal={"sysfs_root": str(tmp_path / "sys"), "ewma_alpha": 1.0, "dwell_s": 1.0,
                 "load_shedding": False},
    )
    daemon = Daemon(config)
    daemons.append(daemon)

    def status() -> dict:
        lines = daemon.find("status")
        return lines[-1] if lines else {}

    def reach(mode: str, size: int | None) -> None:
        daemon.wait_for(lambda: status().get("mode") == mode and
                        (size is None or status().get("input_size") == size), 60,
                        f"mode {mode} at {size}")

    reach("high", 416)
    for celsius, mode, size in ((75, "medium", 320), (82, "low", 256)):
        temp.write_text(f"{celsius * 1000}\n")
        reach(mode, size)
        daemon.wait_for(lambda: status().get("fps_out", 0) > 0, 30, "inferring")

    temp.write_text("90000\n")
    reach("critical", None)
    seen = len(daemon.find("status"))
    daemon.wait_for(lambda: len(daemon.find("status")) >= seen + 4, 30, "paused a while")
    paused = daemon.find("status")[seen + 1:]
    assert all(s["fps_out"] == 0 for s in paused), "no inference while paused"
    assert all(s["fps_in"] > 0 for s in paused), "capture stays alive while paused"

    temp.write_text("40000\n")
    reach("high", 416)
    daemon.wait_for(lambda: status().get("fps_out", 0) > 0, 30, "inferring again")
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.wait(30) == 0

    with sqlite3.connect(tmp_path / "events.db") as conn:
        rows = conn.execute("SELECT detail FROM system_events WHERE kind = 'thermal' "
                            "ORDER BY id").fetchall()
    path = [json.loads(detail)["new"] for (detail,) in rows]
    print("thermal transitions:", " -> ".join(["high", *path]))
    assert path == ["medium", "low", "critical", "low", "medium", "high"]
    assert daemon.find("inference.paused") and daemon.find("inference.resumed")

"""Pipeline health figures computed from the control block, for the status line and sd_notify."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edged.ipc.control import ControlBlock, Counter
from edged.ipc.ring import Ring


@dataclass(frozen=True)
class Sample:
    at: float
    captured: int
    inferred: int
    infer_us_total: int
    frame_drops: int


@dataclass(frozen=True)
class Rates:
    fps_in: float
    fps_out: float
    infer_ms: float
    drops: int
    drops_interval: int


def frame_drops(rings: Sequence[Ring]) -> int:
    """Frames overwritten before inference read them, over every source's ring."""
    return sum(ring.drops for ring in rings)


def sample(control: ControlBlock, frame_drops: int, now: float) -> Sample:
    return Sample(now, control.captured(),
                  control.counter(Counter.FRAMES_INFERRED),
                  control.counter(Counter.INFER_US_TOTAL), frame_drops)


def rates(old: Sample, new: Sample) -> Rates:
    """Rates over the interval; 0 fps when nothing arrived (never a stale figure)."""
    span = max(new.at - old.at, 1e-6)
    inferred = new.inferred - old.inferred
    infer_ms = (new.infer_us_total - old.infer_us_total) / inferred / 1000 if inferred else 0.0
    return Rates((new.captured - old.captured) / span, inferred / span, infer_ms,
                 new.frame_drops, new.frame_drops - old.frame_drops)


STATUS_FILE = "status.json"


def write_status_file(runtime_dir: Path, doc: dict[str, object]) -> None:
    """Atomically replace `<runtime_dir>/status.json` (read by `edged status`)."""
    runtime_dir.mkdir(parents=True, exist_ok=True)
    target = runtime_dir / STATUS_FILE
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, target)


def remove_status_file(runtime_dir: Path) -> None:
    (runtime_dir / STATUS_FILE).unlink(missing_ok=True)


def read_status_file(runtime_dir: Path) -> dict[str, object] | None:
    """The running daemon's last status, or None when no daemon owns it any more."""
    try:
        doc = json.loads((runtime_dir / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None
    pid = doc.get("pid")
    if not isinstance(pid, int):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, owned by the edged user
    return doc


def format_status(doc: dict[str, Any]) -> str:
    age = time.time() - float(doc["written_at"])
    lines = [
        f"edged pid {doc['pid']}  up {doc['uptime_s']:.0f}s  ready={doc['ready']}  "
        f"fps {doc['fps_out']:.1f}/{doc['fps_in']:.1f}  infer {doc['infer_ms']:.1f} ms  "
        f"drops {doc['frame_drops']}  source {doc['source']}  conf {doc['conf']}  "
        f"temp {doc['temp_c']}  mode {doc['thermal_mode']}",
    ]
    if doc.get("backend"):
        lines.append(f"backend {doc['backend']}")
    if age > 10:
        lines.append(f"warning: status is {age:.0f}s old (supervisor wedged?)")
    lines.append(f"{'worker':<10} {'pid':>7} {'state':<9} {'uptime':>8} {'restarts':>8} "
                 f"{'beat_age':>8} {'progress':>9} {'queue':>5}")
    for name, w in doc["workers"].items():
        lines.append(f"{name:<10} {w['pid']:>7} {w['state']:<9} {w['uptime_s']:>7.0f}s "
                     f"{w['restarts']:>8} {w['heartbeat_age_s']:>7.1f}s {w['progress']:>9} "
                     f"{w['queue_depth']:>5}")
    return "\n".join(lines)

"""Pipeline health figures computed from the control block, for the status line and sd_notify."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edged.ipc.control import ControlBlock, Counter

THERMAL_ROOT = Path("/sys/class/thermal")


def read_temperature_c(root: Path = THERMAL_ROOT) -> float | None:
    """Hottest readable thermal zone in °C, or None where the board exposes none."""
    hottest = None
    for zone in root.glob("thermal_zone*/temp"):
        try:
            value = int(zone.read_text().strip()) / 1000.0
        except (OSError, ValueError):
            continue
        hottest = value if hottest is None else max(hottest, value)
    return hottest


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


def sample(control: ControlBlock, frame_drops: int, now: float) -> Sample:
    return Sample(now, control.counter(Counter.FRAMES_CAPTURED),
                  control.counter(Counter.FRAMES_INFERRED),
                  control.counter(Counter.INFER_US_TOTAL), frame_drops)


def rates(old: Sample, new: Sample) -> Rates:
    """Rates over the interval; 0 fps when nothing arrived (never a stale figure)."""
    span = max(new.at - old.at, 1e-6)
    inferred = new.inferred - old.inferred
    infer_ms = (new.infer_us_total - old.infer_us_total) / inferred / 1000 if inferred else 0.0
    return Rates((new.captured - old.captured) / span, inferred / span, infer_ms,
                 new.frame_drops, new.frame_drops - old.frame_drops)

"""Config sections of the thermal governor (`thermal:`) and the tracker (`tracker:`).

Kept apart from edged/config.py so the governor, its sources and the tracker can be read and
tested on their own; config.py imports these sections into `Config`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Section(BaseModel):
    # The same base as edged.config.Section, declared here rather than imported: config.py
    # imports this module to build `Config`, and importing it back would be circular.
    model_config = ConfigDict(extra="forbid", frozen=True)

ModeName = Literal["high", "medium", "low"]
MODE_ORDER: tuple[ModeName, ...] = ("high", "medium", "low")


class ModeConfig(Section):
    """What the pipeline runs with in one thermal mode (`critical` = `low`, paused)."""

    name: ModeName = Field(description="high, medium or low (critical is low, paused).")
    input_size: int = Field(
        ge=32,
        le=2048,
        multiple_of=32,
        description="Square model input side; the ladder is per model (ignored by "
        "fixed-shape models, which get more frame-skip instead).",
    )
    fps: float = Field(gt=0, le=240, description="Ceiling on inferences per second.")
    frame_skip: int = Field(
        ge=1, le=30, description="Infer one frame in N; the tracker predicts the others."
    )
    conf: float = Field(gt=0, le=1, description="Detection score threshold in this mode.")


def _default_modes() -> list[ModeConfig]:
    # The seeds' AdaptiveDetector ladder (640/416/320, 30/20/10 fps, conf 0.5/0.6/0.7), plus
    # frame-skip 2 in `low` so the tracker carries half the frames once it is hot.
    return [
        ModeConfig(name="high", input_size=640, fps=30, frame_skip=1, conf=0.5),
        ModeConfig(name="medium", input_size=416, fps=20, frame_skip=1, conf=0.6),
        ModeConfig(name="low", input_size=320, fps=10, frame_skip=2, conf=0.7),
    ]


class ThermalConfig(Section):
    sysfs_root: Path = Field(
        Path("/sys"),
        description="Root of sysfs; zones are read under class/thermal, cpufreq under "
        "devices/system/cpu (tests point it at a directory tree).",
    )
    zones: list[str] | None = Field(
        None,
        description="Zones to use, by type (cpu-thermal, CPU-therm, tj-therm) or directory "
        "name (thermal_zone0), case-insensitive; None = every zone found.",
    )
    vcgencmd: Literal["auto", "always", "never"] = Field(
        "auto",
        description="Raspberry Pi vcgencmd. auto: temperature from it only when no sysfs "
        "zone exists (it spawns a process per read), throttle flags whenever present.",
    )
    vcgencmd_path: Path | None = Field(
        None, description="vcgencmd executable; None = look it up on PATH."
    )
    vcgencmd_timeout_s: float = Field(2.0, gt=0, le=30, description="Per vcgencmd call.")
    ewma_alpha: float = Field(
        0.3,
        gt=0,
        le=1,
        description="Weight of each new reading in the smoothed temperature (1 = none).",
    )
    medium_at_c: float = Field(70.0, ge=20, le=150, description="Enter medium at or above.")
    low_at_c: float = Field(80.0, ge=20, le=150, description="Enter low at or above.")
    critical_at_c: float = Field(
        85.0, ge=20, le=150, description="Enter critical (inference paused) at or above."
    )
    hysteresis_c: float = Field(
        5.0, ge=0, le=30, description="Leave a mode only below its entry threshold minus this."
    )
    dwell_s: float = Field(
        10.0,
        ge=0,
        le=3600,
        description="Minimum time in a mode before stepping down to a cooler one "
        "(stepping up to a hotter one never waits).",
    )
    sensor_timeout_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="No reading for this long: forget the smoothed value and run in "
        "no_sensor_mode.",
    )
    no_sensor_mode: ModeName = Field(
        "high", description="Mode without any temperature (the SoC's own trip points remain)."
    )
    modes: list[ModeConfig] = Field(
        default_factory=_default_modes,
        description="Settings of high, medium and low, in this order.",
    )
    load_shedding: bool = Field(
        True, description="React to frame drops too (skip more, then lower resolution)."
    )
    load_high_drop_rate: float = Field(
        0.2,
        gt=0,
        le=1,
        description="Smoothed share of frames dropped at or above which the pipeline is "
        "overloaded: raise frame-skip, then lower resolution.",
    )
    load_low_drop_rate: float = Field(
        0.02, ge=0, lt=1, description="At or below this share the load steps are undone."
    )
    load_alpha: float = Field(0.5, gt=0, le=1, description="EWMA weight of the drop rate.")
    load_max_extra_skip: int = Field(
        2, ge=0, le=10, description="Frame-skip added under load before resolution drops."
    )
    load_step_s: float = Field(
        5.0, ge=0, le=3600, description="Minimum time between two load step-ups."
    )
    load_relax_s: float = Field(
        30.0,
        ge=0,
        le=3600,
        description="Minimum calm time before undoing one load step (probing back is slow).",
    )

    @field_validator("modes")
    @classmethod
    def _modes_are_the_ladder(cls, modes: list[ModeConfig]) -> list[ModeConfig]:
        names = tuple(mode.name for mode in modes)
        if names != MODE_ORDER:
            raise ValueError(f"modes must be high, medium, low in this order (got {names})")
        for hot, cool in zip(modes[1:], modes[:-1], strict=True):
            if (
                hot.input_size > cool.input_size
                or hot.fps > cool.fps
                or hot.frame_skip < cool.frame_skip
            ):
                raise ValueError(
                    f"mode {hot.name} must not cost more than {cool.name} "
                    "(input_size and fps not higher, frame_skip not lower)"
                )
        return modes

    @model_validator(mode="after")
    def _thresholds_ascend(self) -> ThermalConfig:
        if not self.medium_at_c < self.low_at_c < self.critical_at_c:
            raise ValueError("thresholds must ascend: medium_at_c < low_at_c < critical_at_c")
        return self

    @model_validator(mode="after")
    def _load_band(self) -> ThermalConfig:
        if self.load_low_drop_rate >= self.load_high_drop_rate:
            raise ValueError("load_low_drop_rate must be below load_high_drop_rate")
        return self


class TrackerConfig(Section):
    high_score: float = Field(
        0.5, gt=0, le=1, description="Detections at or above: first pass, may start tracks."
    )
    low_score: float = Field(
        0.1,
        gt=0,
        le=1,
        description="Detections in [low_score, high_score) only extend live tracks "
        "(ByteTrack's second pass); lower ones are ignored.",
    )
    match_iou: float = Field(
        0.2, gt=0, le=1, description="Min IoU of a high-score detection with a track's prediction."
    )
    low_match_iou: float = Field(
        0.5, gt=0, le=1, description="Min IoU for the low-score pass (stricter: weaker evidence)."
    )
    new_match_iou: float = Field(
        0.3, gt=0, le=1, description="Min IoU to confirm a tentative (not yet confirmed) track."
    )
    match_buffer: float = Field(
        0.3,
        ge=0,
        le=2,
        description="Boxes are widened by this fraction of their size on each side before "
        "IoU matching (C-BIoU): small or fast objects, and skipped frames, still overlap.",
    )
    max_age: int = Field(
        30, ge=1, le=10_000, description="Frames a track survives unmatched (skipped frames count)."
    )
    min_hits: int = Field(
        2, ge=1, le=100, description="Matched inferences before a track is reported."
    )

    @model_validator(mode="after")
    def _score_band(self) -> TrackerConfig:
        if self.low_score > self.high_score:
            raise ValueError("low_score must not exceed high_score")
        return self

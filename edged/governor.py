"""Thermal governor: smoothed temperature + frame drops -> the mode the pipeline runs in.

Pure logic with an injectable clock: the supervisor reads the sensors (edged.thermal), calls
`update()` once per tick and applies `mode` to the control block; every change comes back as
a `Transition` for it to log, store and count.

Rules (why in brackets):
- Temperature is an EWMA of the readings (one noisy read must not change the mode).
- Stepping UP to a hotter mode is immediate, straight to the hottest mode whose entry
  threshold the smoothed value reached, `critical` included, dwell or not [safety first; and
  flapping needs a step down, which is rate-limited below, so at most one round trip per
  `dwell_s` can happen anyway].
- Stepping DOWN is one mode at a time, only once the smoothed value is below the current
  mode's entry threshold minus `hysteresis_c` AND the mode has lasted `dwell_s` [cooling is
  slow and re-heating after a hasty return costs a second transition].
- `critical` runs `low`'s settings with inference paused; it resumes (to `low`) under the same
  rule, i.e. below `critical_at_c - hysteresis_c` after the dwell.
- A missing reading (None) holds the mode. With no reading for `sensor_timeout_s` the smoothed
  value is forgotten and the governor goes to `no_sensor_mode` (default `high`: the SoC's own
  trip points still protect it) and logs `governor.no_sensor` once per outage.
- Load: when the smoothed frame-drop rate stays at or above `load_high_drop_rate`, frame-skip
  rises by one per `load_step_s` up to `load_max_extra_skip`; only then does resolution drop
  one ladder step (a mode name, with its conf) [time resolution is cheaper to give up than
  spatial]. At or below `load_low_drop_rate` for `load_relax_s` the steps are undone in reverse
  order (resolution first). Load never pauses inference and is ignored while paused.
- Fixed-shape model (`sizes_supported=False`): every mode keeps `modes[0].input_size` (set it
  to the model's own size) and frame-skip is scaled by the pixel ratio the ladder would have
  saved, so a hot board still sheds about as much work.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from edged.governor_config import MODE_ORDER, ThermalConfig

log = structlog.get_logger(__name__)

LEVELS = (*MODE_ORDER, "critical")
_CRITICAL = 3
_LOWEST_RUNNING = 2  # `low`: the coolest mode that still infers
_MAX_SKIP = 30  # ModeConfig.frame_skip's own bound


@dataclass(frozen=True)
class ModeSettings:
    name: str
    input_size: int
    fps: float
    frame_skip: int
    conf: float
    paused: bool


@dataclass(frozen=True)
class Transition:
    """One change of the settings; temp_c is the smoothed value that decided it."""

    at: float
    old: str
    new: str
    temp_c: float | None
    reason: str  # "temperature" | "load" | "cooled" | "no_sensor"
    # What the pipeline runs with from now on (a load step may keep the mode's name).
    settings: ModeSettings | None = None


class Governor:
    """Mode decisions from temperature and frame drops; not thread-safe (one caller ticks it)."""

    def __init__(
        self,
        cfg: ThermalConfig,
        sizes_supported: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cfg = cfg
        self._sizes_supported = sizes_supported
        self._clock = clock
        # Entry threshold of medium, low, critical (levels 1..3).
        self._entry = (cfg.medium_at_c, cfg.low_at_c, cfg.critical_at_c)
        now = clock()
        self._level = 0  # thermal level: index into LEVELS
        self._load_level = 0  # ladder level forced by load (0 = none)
        self._extra_skip = 0  # frame-skip added by load
        self._smoothed: float | None = None
        self._drop_rate = 0.0
        self._last_reading_at = now
        self._level_since = now
        self._load_since = now
        self._sensor_lost = False
        self.transitions = 0
        if not sizes_supported:
            log.info(
                "governor.fixed_input_size",
                input_size=cfg.modes[0].input_size,
                note="modes change frame-skip and conf only",
            )
        self._mode = self._settings()

    @property
    def mode(self) -> ModeSettings:
        return self._mode

    @property
    def thermal_mode(self) -> str:
        """The mode temperature alone asks for (under load `mode` may sit lower)."""
        return LEVELS[self._level]

    @property
    def smoothed_c(self) -> float | None:
        return self._smoothed

    @property
    def drop_rate(self) -> float:
        """The smoothed share of frames dropped, as the load rule sees it."""
        return self._drop_rate

    def update(self, temp_c: float | None, frame_drop_rate: float = 0.0) -> Transition | None:
        """Feed one tick (temp_c None = no reading this tick); returns the change, if any.

        At most one step per tick; temperature goes before load.
        """
        now = self._clock()
        self._smooth(now, temp_c, frame_drop_rate)
        reason = self._step_thermal(now) or self._step_load(now)
        if reason is None:
            return None
        new = self._settings()
        old = self._mode
        if new == old:  # e.g. cooled while load already holds the same ladder step
            return None
        self._mode = new
        self.transitions += 1
        return Transition(now, old.name, new.name, self._smoothed, reason, new)

    def _smooth(self, now: float, temp_c: float | None, drop_rate: float) -> None:
        if temp_c is not None and math.isfinite(temp_c):
            if self._sensor_lost:
                log.info("governor.sensor_restored", temp_c=temp_c)
                self._sensor_lost = False
            self._last_reading_at = now
            alpha = self._cfg.ewma_alpha
            previous = self._smoothed
            self._smoothed = temp_c if previous is None else alpha * temp_c + (1 - alpha) * previous
        if math.isfinite(drop_rate):
            rate = min(max(drop_rate, 0.0), 1.0)
            alpha = self._cfg.load_alpha
            self._drop_rate = alpha * rate + (1 - alpha) * self._drop_rate

    def _step_thermal(self, now: float) -> str | None:
        cfg = self._cfg
        if now - self._last_reading_at >= cfg.sensor_timeout_s:
            if not self._sensor_lost:
                self._sensor_lost = True
                self._smoothed = None
                log.warning(
                    "governor.no_sensor",
                    no_reading_s=round(now - self._last_reading_at, 1),
                    mode=cfg.no_sensor_mode,
                )
            target = MODE_ORDER.index(cfg.no_sensor_mode)
            if self._level == target:
                return None
            self._set_level(target, now)
            return "no_sensor"
        temp = self._smoothed
        if temp is None:  # no reading yet, still inside the timeout: hold
            return None
        target = sum(temp >= entry for entry in self._entry)
        if target > self._level:
            self._set_level(target, now)
            return "temperature"
        if (
            self._level > 0
            and temp < self._entry[self._level - 1] - cfg.hysteresis_c
            and now - self._level_since >= cfg.dwell_s
        ):
            self._set_level(self._level - 1, now)
            return "cooled"
        return None

    def _set_level(self, level: int, now: float) -> None:
        self._level = level
        self._level_since = now
        # A new thermal mode changes the work per frame: give the drop rate time to show it.
        self._load_since = now

    def _step_load(self, now: float) -> str | None:
        cfg = self._cfg
        if self._level == _CRITICAL or not cfg.load_shedding:
            return None
        elapsed = now - self._load_since
        if self._drop_rate >= cfg.load_high_drop_rate and elapsed >= cfg.load_step_s:
            ladder = max(self._level, self._load_level)
            if self._extra_skip < cfg.load_max_extra_skip:
                self._extra_skip += 1
            elif self._sizes_supported and ladder < _LOWEST_RUNNING:
                self._load_level = ladder + 1
            else:
                return None  # nothing left to shed short of pausing, which is for heat only
            self._load_since = now
            return "load"
        if self._drop_rate <= cfg.load_low_drop_rate and elapsed >= cfg.load_relax_s:
            if self._load_level > self._level:
                self._load_level -= 1
            elif self._extra_skip > 0:
                self._load_level = 0  # a load step the thermal mode already covers
                self._extra_skip -= 1
            else:
                self._load_level = 0
                return None
            self._load_since = now
            return "load"
        return None

    def _settings(self) -> ModeSettings:
        rung = min(max(self._level, self._load_level), _LOWEST_RUNNING)
        mode = self._cfg.modes[rung]
        name = LEVELS[max(self._level, self._load_level)]
        size, skip = mode.input_size, mode.frame_skip
        if not self._sizes_supported:
            top = self._cfg.modes[0].input_size
            skip = min(_MAX_SKIP, max(skip, round(skip * (top / size) ** 2)))
            size = top
        return ModeSettings(
            name=name,
            input_size=size,
            fps=mode.fps,
            frame_skip=min(_MAX_SKIP, skip + self._extra_skip),
            conf=mode.conf,
            paused=self._level == _CRITICAL,
        )

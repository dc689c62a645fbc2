"""The supervisor's side of the thermal governor: read sensors, update, publish the mode.

The governor's decisions reach the inference worker through the control block; every
transition is logged, stored as a system event and counted.
"""

from __future__ import annotations

import time

import structlog

from edged.governor import LEVELS, Governor, ModeSettings
from edged.governor_config import ThermalConfig
from edged.ipc.control import ControlBlock, Counter
from edged.ipc.ring import Ring
from edged.status import frame_drops
from edged.store.system_log import SystemLog
from edged.thermal import Reading, ThermalSources

log = structlog.get_logger()

_EVERY_S = 1.0


class GovernorLoop:
    def __init__(self, cfg: ThermalConfig, control: ControlBlock, frames: list[Ring],
                 system_log: SystemLog, sizes_supported: bool) -> None:
        self.control, self.frames, self.system_log = control, frames, system_log
        self.sources = ThermalSources(cfg)
        self.governor = Governor(cfg, sizes_supported=sizes_supported)
        self.temp_c: float | None = None
        self.readings: list[Reading] = []
        self._next = 0.0
        self._drops = frame_drops(frames)
        self._captured = control.captured()
        self._publish(self.governor.mode)

    @property
    def mode_name(self) -> str:
        return self.governor.mode.name

    def tick(self) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + _EVERY_S
        self.readings = self.sources.read()
        self.temp_c = max((r.celsius for r in self.readings), default=None)
        drops, captured = frame_drops(self.frames), self.control.captured()
        fresh = captured - self._captured
        drop_rate = (drops - self._drops) / fresh if fresh > 0 else 0.0
        self._drops, self._captured = drops, captured
        transition = self.governor.update(self.temp_c, min(drop_rate, 1.0))
        if transition is None:
            return
        mode = self.governor.mode
        self._publish(mode)
        self.control.add(Counter.MODE_TRANSITIONS)
        temp = None if transition.temp_c is None else round(transition.temp_c, 1)
        log.warning("governor.mode_changed", old=transition.old, new=transition.new,
                    reason=transition.reason, temp_c=temp, input_size=mode.input_size,
                    frame_skip=mode.frame_skip, conf=mode.conf, paused=mode.paused)
        self.system_log.add("thermal", old=transition.old, new=transition.new,
                            reason=transition.reason, temp_c=temp,
                            input_size=mode.input_size, frame_skip=mode.frame_skip)

    def _publish(self, mode: ModeSettings) -> None:
        control = self.control
        control.put(Counter.MODE_LEVEL, LEVELS.index(mode.name))
        control.put(Counter.MODE_INPUT_SIZE, mode.input_size)
        control.put(Counter.MODE_FRAME_SKIP, mode.frame_skip)
        control.put(Counter.MODE_CONF_MILLI, round(mode.conf * 1000))
        control.put(Counter.MODE_FPS_MILLI, round(mode.fps * 1000))
        control.put(Counter.MODE_PAUSED, int(mode.paused))

    def reconfigure(self, cfg: ThermalConfig, sizes_supported: bool) -> None:
        """A reload: new thresholds and ladder; start again from the current temperature."""
        self.sources = ThermalSources(cfg)
        self.governor = Governor(cfg, sizes_supported=sizes_supported)
        self._publish(self.governor.mode)

"""What the supervisor tells the world each tick: sd_notify (READY, STATUS, WATCHDOG,
EXTEND_TIMEOUT), the status line in the log, and the status file `edged status` reads."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

import structlog

from edged.config import Config
from edged.governor_loop import GovernorLoop
from edged.ipc.control import ControlBlock, Counter, Slot, Worker, WorkerId, WorkerState
from edged.ipc.ring import Ring
from edged.notify import Notifier
from edged.status import (
    Rates,
    frame_drops,
    rates,
    remove_status_file,
    sample,
    write_status_file,
)

if TYPE_CHECKING:
    from edged.watchdog import WorkerProcess

log = structlog.get_logger()

_STATUS_FILE_EVERY_S = 1.0
_EXTEND_EVERY_S = 2.0
_READY_WITHOUT_SOURCE_S = 10.0


class Reporter:
    def __init__(self, config: Config, control: ControlBlock, frames: list[Ring], results: Ring,
                 governor: GovernorLoop, notifier: Notifier, backend: str = "") -> None:
        self.governor = governor
        self.backend = backend  # "onnxruntime (auto: no NVIDIA GPU; x86_64 CPU)"
        self.config = config
        self.control = control
        self.frames = frames
        self.results = results
        self.notifier = notifier
        self.started = time.monotonic()
        self.ready = False
        self._last = sample(control, frame_drops(frames), self.started)
        self._rates = Rates(0.0, 0.0, 0.0, 0, 0)
        self._next_status = self.started + config.daemon.status_interval_s
        self._next_file = self.started
        self._next_extend = self.started
        self._watchdog_every = notifier.watchdog_interval_s()
        self._next_watchdog = self.started

    def tick(self, workers: Mapping[WorkerId, WorkerProcess], healthy: bool) -> None:
        now = time.monotonic()
        self._readiness(workers, now)
        if self._watchdog_every is not None and now >= self._next_watchdog and healthy:
            # Withheld while unhealthy past budget: then systemd's WatchdogSec takes over.
            self.notifier.watchdog()
            self._next_watchdog = now + self._watchdog_every
        if now >= self._next_status:
            current = sample(self.control, frame_drops(self.frames), now)
            self._rates, self._last = rates(self._last, current), current
            self._status_line(workers)
            self._next_status = now + self.config.daemon.status_interval_s
        if now >= self._next_file:
            write_status_file(self.config.daemon.runtime_dir, self.document(workers))
            self._next_file = now + _STATUS_FILE_EVERY_S

    def _readiness(self, workers: Mapping[WorkerId, WorkerProcess], now: float) -> None:
        if self.ready:
            return
        inferred = self.control.counter(Counter.FRAMES_INFERRED) > 0
        # A camera absent at start is not a failure: once every worker runs, edged is up
        # and waiting for its source.
        waiting = now - self.started > _READY_WITHOUT_SOURCE_S and \
            self._sources() == "down" and \
            all(w.state == WorkerState.RUNNING for w in workers.values())
        if inferred or waiting:
            self.ready = True
            self.notifier.ready()
            log.info("supervisor.ready", first_frame_inferred=inferred,
                     input_size=self.control.counter(Counter.INPUT_SIZE))
        elif now >= self._next_extend:
            # Loading a model or building an engine can outlast TimeoutStartSec.
            self.notifier.extend_timeout(3 * _EXTEND_EVERY_S)
            self._next_extend = now + _EXTEND_EVERY_S

    def _status_line(self, workers: Mapping[WorkerId, WorkerProcess]) -> None:
        r, temp, mode = self._rates, self.governor.temp_c, self.governor.mode_name
        restarts = sum(w.total_restarts for w in workers.values())
        conf = self.control.counter(Counter.CONF_MILLI) / 1000
        source = self._sources()
        log.info("status", fps_in=round(r.fps_in, 1), fps_out=round(r.fps_out, 1),
                 drops=r.drops, drops_recent=r.drops_interval, infer_ms=round(r.infer_ms, 1),
                 source=source, conf=conf, events=self.control.counter(Counter.EVENTS_COMMITTED),
                 result_overflows=self.control.counter(Counter.RESULT_OVERFLOWS),
                 restarts=restarts, temp_c=None if temp is None else round(temp, 1),
                 mode=mode, input_size=self.control.counter(Counter.INPUT_SIZE),
                 predicted=self.control.counter(Counter.FRAMES_PREDICTED),
                 mode_changes=self.control.counter(Counter.MODE_TRANSITIONS))
        text = (f"fps {r.fps_out:.1f}/{r.fps_in:.1f} infer {r.infer_ms:.1f}ms "
                f"drops {r.drops} source {source} conf {conf:g} restarts {restarts}")
        text += f" mode {mode}"
        if temp is not None:
            text += f" temp {temp:.0f}C"
        self.notifier.status(text)

    def _sources(self) -> str:
        """up, down, or "k/n up" with several sources."""
        up = self.control.sources_up(len(self.config.sources))
        return "up" if all(up) else "down" if not any(up) else f"{sum(up)}/{len(up)} up"

    def document(self, workers: Mapping[WorkerId, WorkerProcess]) -> dict[str, object]:
        now_ns = time.monotonic_ns()
        depth = {Worker.INFERENCE: sum(r.depth for r in self.frames),
                 Worker.SINK: self.results.depth}
        r = self._rates
        return {
            "pid": os.getpid(),
            "written_at": time.time(),
            "uptime_s": round(time.monotonic() - self.started, 1),
            "ready": self.ready,
            "fps_in": round(r.fps_in, 2), "fps_out": round(r.fps_out, 2),
            "infer_ms": round(r.infer_ms, 2),
            "frame_drops": frame_drops(self.frames),
            "result_overflows": self.control.counter(Counter.RESULT_OVERFLOWS),
            "source": self._sources(),
            "reconnects": self.control.reconnects(),
            "sources": [
                {"name": src.name, "up": bool(self.control.get(cap, Slot.SOURCE_UP)),
                 "frames": self.control.get(cap, Slot.PROGRESS),
                 "reconnects": self.control.get(cap, Slot.RECONNECTS),
                 "drops": ring.drops}
                for src, cap, ring in zip(self.config.sources,
                                          (WorkerId(Worker.CAPTURE, i) for i in range(
                                              len(self.config.sources))),
                                          self.frames, strict=False)
            ],
            "conf": self.control.counter(Counter.CONF_MILLI) / 1000,
            "input_size": self.control.counter(Counter.INPUT_SIZE),
            "backend": self.backend,
            "events": self.control.counter(Counter.EVENTS_COMMITTED),
            "db_bytes": self.control.counter(Counter.DB_BYTES),
            "outbox_backlog": self.control.counter(Counter.OUTBOX_BACKLOG),
            "uplink_connected": bool(self.control.counter(Counter.UPLINK_CONNECTED)),
            "temp_c": self.governor.temp_c,
            "thermal_mode": self.governor.mode_name,
            "mode_changes": self.control.counter(Counter.MODE_TRANSITIONS),
            "frames_predicted": self.control.counter(Counter.FRAMES_PREDICTED),
            "config_generation": self.control.counter(Counter.CONFIG_GENERATION),
            "workers": {
                wid.title: {
                    "pid": self.control.get(wid, Slot.PID),
                    "state": w.state.name.lower(),
                    "uptime_s": round((now_ns - self.control.get(wid, Slot.STARTED_NS)) / 1e9, 1)
                    if w.alive else 0.0,
                    "restarts": w.total_restarts,
                    "heartbeat_age_s": round(
                        (now_ns - self.control.get(wid, Slot.HEARTBEAT_NS)) / 1e9, 2),
                    "progress": self.control.get(wid, Slot.PROGRESS),
                    "queue_depth": depth.get(wid.kind, 0),
                }
                for wid, w in workers.items()
            },
        }

    def close(self) -> None:
        remove_status_file(self.config.daemon.runtime_dir)

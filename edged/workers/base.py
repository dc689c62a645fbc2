"""What every worker process does first, and the handles it gets from the supervisor."""

from __future__ import annotations

import faulthandler
import os
import signal
from dataclasses import dataclass
from types import FrameType

import structlog
from setproctitle import setproctitle

from edged.config import Config
from edged.ipc.config_channel import ConfigChannel
from edged.ipc.control import ControlBlock, Slot, WorkerId
from edged.ipc.segment import Segment
from edged.logging import setup_logging


@dataclass(frozen=True)
class IpcNames:
    """Shared-memory segment names, created (and later unlinked) by the supervisor."""

    control: str
    frames: tuple[str, ...]  # one ring per source, in `sources` order
    results: str
    config: str


@dataclass(frozen=True)
class RunLimits:
    max_frames: int | None = None  # capture stops (and the pipeline drains) after this many


@dataclass(frozen=True)
class WorkerArgs:
    """Everything a worker needs, pickled once at spawn."""

    worker: WorkerId
    config: Config
    ipc: IpcNames
    limits: RunLimits
    class_names: tuple[str, ...]
    config_generation: int = 0  # the reload channel generation `config` corresponds to


class StopFlag:
    """Set by SIGTERM (the watchdog's polite kill) or by the supervisor's STOP word."""

    def __init__(self, control: ControlBlock, worker: WorkerId) -> None:
        self._control = control
        self._worker = worker
        self._signalled = False
        signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        self._signalled = True

    @property
    def drain(self) -> bool:
        """The supervisor asked to finish the queued work before exiting."""
        return self._control.get(self._worker, Slot.STOP) == 2

    def __bool__(self) -> bool:
        return self._signalled or self._control.stop_requested(self._worker)


@dataclass(frozen=True)
class WorkerContext:
    control: ControlBlock
    stop: StopFlag
    reloads: ConfigChannel  # poll() -> the new Config after a SIGHUP, else None


def setup_process(args: WorkerArgs) -> WorkerContext:
    """Title, signals, logging, faulthandler; then attach the shared segments."""
    title = args.worker.title
    setproctitle(f"edged: {title}")
    # Ctrl-C reaches the whole foreground process group; only the supervisor decides.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    faulthandler.enable()
    setup_logging(args.config.logging, title)
    control = ControlBlock(Segment.attach(args.ipc.control))
    control.set(args.worker, Slot.PID, os.getpid())
    control.beat(args.worker)
    reloads = ConfigChannel(Segment.attach(args.ipc.config))
    reloads.seen = args.config_generation
    structlog.get_logger().debug("worker.started", pid=os.getpid())
    return WorkerContext(control, StopFlag(control, args.worker), reloads)

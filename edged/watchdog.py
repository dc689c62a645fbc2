"""Worker processes: spawn, stall detection, two-step kill, restart with capped exponential
back-off and a crash-loop guard.

A worker is *stalled* when its own loop stopped stamping its heartbeat for longer than its
stall timeout (a longer grace while it starts: model load, engine build), or when one
inference has been running past its limit. A worker that waits on an empty queue keeps
stamping, so it is starved, not stalled, and is left alone.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.process import BaseProcess

import structlog

from edged.config import WatchdogConfig
from edged.ipc.control import ControlBlock, Slot, Worker, WorkerId, WorkerRef, WorkerState
from edged.workers.base import WorkerArgs

log = structlog.get_logger()

# forkserver/spawn, never fork: forking a supervisor that runs threads can deadlock.
_CONTEXT = mp.get_context("spawn")


def stall_reason(control: ControlBlock, worker: WorkerRef, cfg: WatchdogConfig,
                 now_ns: int) -> str | None:
    """Why `worker` counts as stalled at `now_ns` (monotonic), or None when it is healthy."""
    state = control.state(worker)
    if state not in (WorkerState.STARTING, WorkerState.RUNNING):
        return None
    age_s = (now_ns - control.get(worker, Slot.HEARTBEAT_NS)) / 1e9
    limit = cfg.startup_grace_s if state == WorkerState.STARTING else {
        Worker.CAPTURE: cfg.capture_stall_s,
        Worker.INFERENCE: cfg.inference_stall_s,
        Worker.SINK: cfg.sink_stall_s,
        Worker.UPLINK: cfg.sink_stall_s,
    }[worker.kind if isinstance(worker, WorkerId) else worker]
    busy_since = control.get(worker, Slot.BUSY_SINCE_NS)
    if busy_since and (now_ns - busy_since) / 1e9 > cfg.inference_timeout_s:
        return f"stalled: one inference running for {(now_ns - busy_since) / 1e9:.1f} s"
    if age_s > limit:
        phase = "starting" if state == WorkerState.STARTING else "running"
        return f"stalled: no heartbeat for {age_s:.1f} s while {phase}"
    return None


class WorkerProcess:
    """One worker: its current process, its state and its restart history."""

    def __init__(self, args: WorkerArgs, control: ControlBlock, cfg: WatchdogConfig,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.args = args
        self.id: WorkerId = args.worker
        self.control = control
        self.cfg = cfg
        self.clock = clock
        self.process: BaseProcess | None = None
        self.restarts: deque[float] = deque()
        self.total_restarts = 0
        self.restarts_by_reason: dict[str, int] = {}  # stalled / exited / killed
        self.next_start = 0.0
        self.kill_at: float | None = None  # SIGKILL deadline after a polite SIGTERM
        self.stall: str | None = None
        self.planned = False  # stopped on purpose (config reload): restart at once, uncounted
        self.unhealthy_since: float | None = None

    @property
    def name(self) -> str:
        return self.id.title

    @property
    def kind(self) -> Worker:
        return self.id.kind

    @property
    def state(self) -> WorkerState:
        return self.control.state(self.id)

    def set_state(self, state: WorkerState, **why: object) -> None:
        previous = self.state
        if previous == state:
            return
        self.control.set(self.id, Slot.STATE, state)
        log.debug("worker.state", worker=self.name, old=previous.name.lower(),
                  new=state.name.lower(), **why)

    def start(self) -> None:
        for slot in (Slot.STOP, Slot.LOOP_READY, Slot.BUSY_SINCE_NS):
            self.control.set(self.id, slot, 0)
        self.kill_at, self.stall, self.planned = None, None, False
        from edged.workers.entry import main

        process = _CONTEXT.Process(target=main, args=(self.args,), name=f"edged-{self.name}",
                                   daemon=False)
        process.start()
        self.process = process
        self.control.set(self.id, Slot.PID, process.pid or 0)
        self.control.set(self.id, Slot.STARTED_NS, time.monotonic_ns())
        self.control.beat(self.id)
        self.set_state(WorkerState.STARTING, pid=process.pid)
        log.info("worker.spawned", worker=self.name, pid=process.pid)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()

    @property
    def exitcode(self) -> int | None:
        return None if self.process is None else self.process.exitcode

    def request_stop(self, drain: bool) -> None:
        self.control.set(self.id, Slot.STOP, 2 if drain else 1)
        if self.alive:
            self.set_state(WorkerState.STOPPING, drain=drain)

    def join(self, timeout_s: float) -> bool:
        if self.process is None:
            return True
        self.process.join(max(0.0, timeout_s))
        return not self.process.is_alive()

    def kill(self) -> None:
        if self.process is not None and self.process.pid and self.alive:
            log.warning("worker.killed", worker=self.name, pid=self.process.pid)
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.join(5)

    def terminate(self, reason: str, planned: bool = False) -> None:
        """Polite stop: SIGTERM now, SIGKILL once kill_grace_s has passed."""
        if self.process is None or not self.process.pid or self.kill_at is not None:
            return
        self.stall, self.planned = reason, planned
        self.kill_at = self.clock() + self.cfg.kill_grace_s
        if planned:
            log.info("worker.replacing", worker=self.name, pid=self.process.pid, reason=reason)
        else:
            log.error("worker.stalled", worker=self.name, pid=self.process.pid, reason=reason)
        os.kill(self.process.pid, signal.SIGTERM)

    def enforce_kill_deadline(self) -> None:
        if self.kill_at is not None and self.alive and self.clock() >= self.kill_at:
            self.kill()

    def exit_reason(self) -> str:
        if self.stall is not None:
            return self.stall
        code = self.exitcode
        if code is None:
            return "running"
        if code < 0:
            return f"killed by signal {signal.Signals(-code).name}"
        return f"exited with code {code}"

    def schedule_restart(self) -> bool:
        """Record a restart; False when the crash-loop budget for the window is spent."""
        now = self.clock()
        self.restarts.append(now)
        while self.restarts and now - self.restarts[0] > self.cfg.restart_window_s:
            self.restarts.popleft()
        self.total_restarts += 1
        kind = self.exit_reason().split(" ", 1)[0].rstrip(":")
        self.restarts_by_reason[kind] = self.restarts_by_reason.get(kind, 0) + 1
        if len(self.restarts) > self.cfg.max_restarts:
            self.set_state(WorkerState.FATAL)
            return False
        delay = min(self.cfg.backoff_initial_s * 2 ** (len(self.restarts) - 1),
                    self.cfg.backoff_max_s)
        self.next_start = now + delay
        self.set_state(WorkerState.BACKOFF, retry_in_s=delay)
        return True

    def mark_running_when_ready(self) -> None:
        if self.state == WorkerState.STARTING and self.control.get(self.id, Slot.LOOP_READY):
            self.set_state(WorkerState.RUNNING)

    def unhealthy_for(self) -> float:
        """Seconds this worker has been out of RUNNING (0 while it runs)."""
        now = self.clock()
        if self.state == WorkerState.RUNNING:
            self.unhealthy_since = None
            return 0.0
        if self.unhealthy_since is None:
            self.unhealthy_since = now
        return now - self.unhealthy_since

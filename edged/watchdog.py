"""Worker processes: spawn, reap, restart with capped exponential back-off, crash-loop guard."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.process import BaseProcess

import structlog

from edged.ipc.control import ControlBlock, Slot, Worker, WorkerState
from edged.workers.base import WorkerArgs

log = structlog.get_logger()

# forkserver/spawn, never fork: forking a supervisor that runs threads can deadlock.
_CONTEXT = mp.get_context("spawn")


class WorkerProcess:
    """One worker kind: its current process, its state and its restart history."""

    def __init__(self, args: WorkerArgs, control: ControlBlock,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.args = args
        self.kind: Worker = args.worker
        self.control = control
        self.clock = clock
        self.process: BaseProcess | None = None
        self.restarts: deque[float] = deque()
        self.total_restarts = 0
        self.next_start = 0.0
        self.backoff_s = 0.5

    @property
    def name(self) -> str:
        return self.kind.title

    @property
    def state(self) -> WorkerState:
        return self.control.state(self.kind)

    def set_state(self, state: WorkerState, **why: object) -> None:
        previous = self.state
        if previous == state:
            return
        self.control.set(self.kind, Slot.STATE, state)
        log.debug("worker.state", worker=self.name, old=previous.name.lower(),
                  new=state.name.lower(), **why)

    def start(self) -> None:
        for slot in (Slot.STOP, Slot.LOOP_READY, Slot.BUSY_SINCE_NS):
            self.control.set(self.kind, slot, 0)
        from edged.workers.entry import main

        process = _CONTEXT.Process(target=main, args=(self.args,), name=f"edged-{self.name}",
                                   daemon=False)
        process.start()
        self.process = process
        self.control.set(self.kind, Slot.PID, process.pid or 0)
        self.control.set(self.kind, Slot.STARTED_NS, time.monotonic_ns())
        self.control.beat(self.kind)
        self.set_state(WorkerState.STARTING, pid=process.pid)
        log.info("worker.spawned", worker=self.name, pid=process.pid)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()

    @property
    def exitcode(self) -> int | None:
        return None if self.process is None else self.process.exitcode

    def request_stop(self, drain: bool) -> None:
        self.control.set(self.kind, Slot.STOP, 2 if drain else 1)
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

    def exit_reason(self) -> str:
        code = self.exitcode
        if code is None:
            return "running"
        if code < 0:
            return f"killed by signal {signal.Signals(-code).name}"
        return f"exited with code {code}"

    def schedule_restart(self, window_s: float, max_restarts: int) -> bool:
        """Record a restart; False when the crash-loop budget for the window is spent."""
        now = self.clock()
        self.restarts.append(now)
        while self.restarts and now - self.restarts[0] > window_s:
            self.restarts.popleft()
        self.total_restarts += 1
        if len(self.restarts) > max_restarts:
            self.set_state(WorkerState.FATAL)
            return False
        delay = min(self.backoff_s * 2 ** (len(self.restarts) - 1), 30.0)
        self.next_start = now + delay
        self.set_state(WorkerState.BACKOFF, retry_in_s=delay)
        return True

    def mark_running_when_ready(self) -> None:
        if self.state == WorkerState.STARTING and self.control.get(self.kind, Slot.LOOP_READY):
            self.set_state(WorkerState.RUNNING)

"""The supervisor: owns the workers' lifecycle, signals, sd_notify and the status line.

Its main loop is a short fixed sequence per tick (signals -> reap -> readiness -> status ->
limits); shutdown runs once, after the loop, in pipeline order so nothing in flight is lost.
"""

from __future__ import annotations

import queue
import signal
import time
from dataclasses import dataclass
from types import FrameType

import structlog

from edged.config import Config, redact_uri
from edged.exitcodes import ExitCode
from edged.ipc.control import ControlBlock, Counter, Worker, WorkerState
from edged.ipc.frames import create_frame_ring
from edged.ipc.results import create_result_ring
from edged.ipc.ring import Ring
from edged.ipc.segment import Segment, new_run_id, remove_stale_segments, segment_name
from edged.notify import Notifier
from edged.status import Rates, rates, read_temperature_c, sample
from edged.watchdog import WorkerProcess
from edged.workers.base import IpcNames, RunLimits, WorkerArgs

log = structlog.get_logger()

_TICK_S = 0.1
_RESTART_WINDOW_S = 60.0
_MAX_RESTARTS = 5
# Start downstream first so that nothing the upstream produces finds no consumer.
_START_ORDER = (Worker.SINK, Worker.INFERENCE, Worker.CAPTURE)
_STOP_ORDER = (Worker.CAPTURE, Worker.INFERENCE, Worker.SINK)


@dataclass(frozen=True)
class RunOptions:
    duration_s: float | None = None
    max_frames: int | None = None


class Supervisor:
    def __init__(self, config: Config, class_names: list[str], options: RunOptions,
                 notifier: Notifier | None = None) -> None:
        self.config = config
        self.class_names = tuple(class_names)
        self.options = options
        self.notifier = notifier or Notifier()
        self.signals: queue.SimpleQueue[int] = queue.SimpleQueue()
        self.segments: list[Segment] = []
        self.workers: dict[Worker, WorkerProcess] = {}
        self.exit_code = ExitCode.OK
        self.should_exit = False
        self.drain = False
        self.ready = False

    # -- setup ---------------------------------------------------------------------------
    def _create_ipc(self) -> IpcNames:
        remove_stale_segments()
        run_id = new_run_id()
        names = IpcNames(segment_name(run_id, "control"), segment_name(run_id, "frames"),
                         segment_name(run_id, "results"))
        src, queues = self.config.source, self.config.queues
        self.segments = [
            ControlBlock.create(names.control),
            create_frame_ring(names.frames, queues.frame_slots, src.max_width, src.max_height),
            create_result_ring(names.results, queues.result_slots, self.config.detect.max_det),
        ]
        self.control = ControlBlock(self.segments[0])
        self.frames = Ring(self.segments[1])
        self.results = Ring(self.segments[2])
        return names

    def _install_signals(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._enqueue_signal)

    def _enqueue_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signals.put_nowait(signum)  # handlers only enqueue; the loop acts

    # -- main loop -----------------------------------------------------------------------
    def run(self) -> int:
        names = self._create_ipc()
        limits = RunLimits(max_frames=self.options.max_frames)
        try:
            self._install_signals()
            for kind in _START_ORDER:
                self.workers[kind] = WorkerProcess(
                    WorkerArgs(kind, self.config, names, limits, self.class_names), self.control)
                self.workers[kind].start()
            log.info("supervisor.started", source=redact_uri(self.config.source.uri),
                     mode=self.config.source.mode, model=str(self.config.model.path),
                     db=str(self.config.store.path))
            self._loop()
            self._shutdown()
        finally:
            for worker in self.workers.values():
                worker.kill()
            for segment in self.segments:
                segment.unlink()
            self.notifier.close()
        log.info("supervisor.exited", code=int(self.exit_code))
        return int(self.exit_code)

    def _loop(self) -> None:
        started = time.monotonic()
        last = sample(self.control, self.frames.drops, started)
        next_status = started + self.config.daemon.status_interval_s
        while not self.should_exit:
            self._handle_signals()
            self._reap()
            self._check_ready()
            now = time.monotonic()
            if now >= next_status:
                current = sample(self.control, self.frames.drops, now)
                self._report(rates(last, current))
                last, next_status = current, now + self.config.daemon.status_interval_s
            if self.options.duration_s is not None and now - started >= self.options.duration_s:
                log.info("supervisor.duration_reached", seconds=self.options.duration_s)
                self.should_exit = True
            time.sleep(_TICK_S)

    def _handle_signals(self) -> None:
        while not self.signals.empty():
            signum = self.signals.get_nowait()
            if signum == signal.SIGHUP:
                log.warning("supervisor.reload_unsupported",
                            hint="restart edged to apply config changes")
                continue
            log.info("supervisor.stop_requested", signal=signal.Signals(signum).name)
            self.should_exit = True

    def _reap(self) -> None:
        for worker in self.workers.values():
            if worker.state == WorkerState.BACKOFF:
                if time.monotonic() >= worker.next_start:
                    worker.start()
                continue
            if worker.alive or worker.process is None:
                worker.mark_running_when_ready()
                continue
            self._on_exit(worker)
            if self.should_exit:
                return

    def _on_exit(self, worker: WorkerProcess) -> None:
        code = worker.exitcode
        if worker.kind == Worker.CAPTURE and code == 0:
            log.info("supervisor.source_finished", frames=self.control.counter(
                Counter.FRAMES_CAPTURED))
            worker.set_state(WorkerState.EXITED)
            self.should_exit, self.drain = True, True
            return
        if code == ExitCode.UNAVAILABLE:
            log.error("supervisor.worker_unavailable", worker=worker.name,
                      hint="see the worker's error above; not restarting")
            worker.set_state(WorkerState.FATAL)
            self.exit_code, self.should_exit = ExitCode.UNAVAILABLE, True
            return
        reason = worker.exit_reason()
        if not worker.schedule_restart(_RESTART_WINDOW_S, _MAX_RESTARTS):
            log.error("supervisor.crash_loop", worker=worker.name, reason=reason,
                      restarts=len(worker.restarts), window_s=_RESTART_WINDOW_S)
            self.exit_code, self.should_exit = ExitCode.SOFTWARE, True
            return
        log.warning("worker.restarting", worker=worker.name, reason=reason,
                    retry_in_s=round(worker.next_start - time.monotonic(), 2),
                    restarts=worker.total_restarts)

    def _check_ready(self) -> None:
        if not self.ready and self.control.counter(Counter.FRAMES_INFERRED) > 0:
            self.ready = True
            self.notifier.ready()
            log.info("supervisor.ready", input_size=self.control.counter(Counter.INPUT_SIZE))

    def _report(self, figures: Rates) -> None:
        temp = read_temperature_c()
        overflows = self.control.counter(Counter.RESULT_OVERFLOWS)
        log.info("status", fps_in=round(figures.fps_in, 1), fps_out=round(figures.fps_out, 1),
                 drops=figures.drops, drops_recent=figures.drops_interval,
                 infer_ms=round(figures.infer_ms, 1),
                 source="up" if self.control.counter(Counter.SOURCE_UP) else "down",
                 events=self.control.counter(Counter.EVENTS_COMMITTED),
                 result_overflows=overflows,
                 temp_c=None if temp is None else round(temp, 1))
        text = (f"fps {figures.fps_out:.1f}/{figures.fps_in:.1f} "
                f"infer {figures.infer_ms:.1f}ms drops {figures.drops}")
        if temp is not None:
            text += f" temp {temp:.0f}C"
        self.notifier.status(text)

    # -- shutdown ------------------------------------------------------------------------
    def _shutdown(self) -> None:
        self.notifier.stopping()
        deadline = time.monotonic() + self.config.daemon.stop_timeout_s
        log.info("supervisor.stopping", drain=self.drain)
        for kind in _STOP_ORDER:
            worker = self.workers[kind]
            if not worker.alive:
                continue
            # Inference drains the frame ring only when the source ended by itself
            # (files, --max-frames); on a signal it finishes the frame in hand.
            worker.request_stop(drain=self.drain and kind == Worker.INFERENCE)
            while not worker.join(0.2):
                if not self.signals.empty() and self._forced():
                    break
                if time.monotonic() >= deadline:
                    log.error("supervisor.stop_timeout", worker=worker.name)
                    break
            if worker.alive:
                worker.kill()
            worker.set_state(WorkerState.EXITED, reason=worker.exit_reason())

    def _forced(self) -> bool:
        """A second SIGTERM/SIGINT while stopping kills what is left."""
        signum = self.signals.get_nowait()
        if signum == signal.SIGHUP:
            return False
        log.warning("supervisor.forced_stop", signal=signal.Signals(signum).name)
        for worker in self.workers.values():
            worker.kill()
        return True

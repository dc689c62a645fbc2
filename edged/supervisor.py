"""The supervisor: owns the workers' lifecycle, signals, the watchdog and sd_notify.

Its main loop is a short fixed sequence per tick (signals -> reap -> watchdog -> readiness ->
status -> limits); shutdown runs once, after the loop, in pipeline order so nothing in
flight is lost.
"""

from __future__ import annotations

import dataclasses
import queue
import signal
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import structlog

from edged.config import Config, ConfigError, load_config, redact_uri
from edged.exitcodes import ExitCode
from edged.governor_loop import GovernorLoop
from edged.ipc.config_channel import ConfigChannel, create_config_channel
from edged.ipc.control import ControlBlock, Counter, Slot, Worker, WorkerId, WorkerState
from edged.ipc.frames import create_frame_ring
from edged.ipc.results import create_result_ring
from edged.ipc.ring import Ring
from edged.ipc.segment import Segment, new_run_id, remove_stale_segments, segment_name
from edged.metrics import PipelineCollector, serve
from edged.notify import Notifier
from edged.preflight import ModelFacts
from edged.reload import plan_reload
from edged.reporting import Reporter
from edged.store.system_log import SystemLog
from edged.watchdog import WorkerProcess, stall_reason
from edged.workers.base import IpcNames, RunLimits, WorkerArgs

log = structlog.get_logger()

_TICK_S = 0.1
# Start downstream first so that nothing the upstream produces finds no consumer.
# The uplink stops last: the sink's final commit ends the open events, and it sends them.
_START_ORDER = (Worker.UPLINK, Worker.SINK, Worker.INFERENCE, Worker.CAPTURE)
_STOP_ORDER = (Worker.CAPTURE, Worker.INFERENCE, Worker.SINK, Worker.UPLINK)


def worker_ids(config: Config, kinds: tuple[Worker, ...]) -> list[WorkerId]:
    """Every worker of `kinds`, in that order; one capture worker per source."""
    ids = []
    for kind in kinds:
        count = {Worker.CAPTURE: len(config.sources),
                 Worker.UPLINK: int(config.mqtt.enabled)}.get(kind, 1)
        ids += [WorkerId(kind, index) for index in range(count)]
    return ids


@dataclasses.dataclass(frozen=True)
class RunOptions:
    duration_s: float | None = None
    max_frames: int | None = None


Preflight = Callable[[Config], tuple[Config, ModelFacts]]


class Supervisor:
    def __init__(self, config: Config, config_path: Path, facts: ModelFacts,
                 options: RunOptions, preflight: Preflight,
                 notifier: Notifier | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.facts = facts
        self.class_names = tuple(facts.names)
        self.options = options
        self.preflight = preflight
        self.notifier = notifier or Notifier()
        self.signals: queue.SimpleQueue[int] = queue.SimpleQueue()
        self.segments: list[Segment] = []
        self.workers: dict[WorkerId, WorkerProcess] = {}
        self.system_log = SystemLog(config.store.path)
        self.exit_code = ExitCode.OK
        self.should_exit = False
        self.drain = False

    # -- setup ---------------------------------------------------------------------------
    def _create_ipc(self) -> IpcNames:
        remove_stale_segments()
        run_id = new_run_id()
        sources, queues = self.config.sources, self.config.queues
        names = IpcNames(segment_name(run_id, "control"),
                         tuple(segment_name(run_id, f"frames{i}") for i in range(len(sources))),
                         segment_name(run_id, "results"), segment_name(run_id, "config"))
        control = ControlBlock.create(names.control)
        frames = [create_frame_ring(name, queues.frame_slots, src.max_width, src.max_height)
                  for name, src in zip(names.frames, sources, strict=True)]
        results = create_result_ring(names.results, queues.result_slots,
                                     self.config.detect.max_det)
        channel = create_config_channel(names.config)
        self.segments = [control, *frames, results, channel]
        self.control = ControlBlock(control)
        self.frames = [Ring(segment) for segment in frames]
        self.results = Ring(results)
        self.reloads = ConfigChannel(channel)
        return names

    def _serve_metrics(self) -> None:
        cfg = self.config.metrics
        if not cfg.enabled:
            return
        collector = PipelineCollector(self.control, self.frames, self.governor,
                                      lambda: self.workers,
                                      lambda: [src.name for src in self.config.sources])
        try:
            serve(collector, cfg.host, cfg.port)
        except OSError as exc:  # a taken port must not stop detection
            log.error("metrics.unavailable", host=cfg.host, port=cfg.port, error=str(exc))
            self.system_log.add("error", what="metrics endpoint", error=str(exc))

    def _enqueue_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signals.put_nowait(signum)  # handlers only enqueue; the loop acts

    # -- main loop -----------------------------------------------------------------------
    def run(self) -> int:
        names = self._create_ipc()
        limits = RunLimits(max_frames=self.options.max_frames)
        self.governor = GovernorLoop(self.config.thermal, self.control, self.frames,
                                     self.system_log, self._sizes_supported())
        backend = f"{self.facts.backend} ({self.facts.backend_reason})"
        self.reporter = Reporter(self.config, self.control, self.frames, self.results,
                                 self.governor, self.notifier, backend)
        self._serve_metrics()
        try:
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(signum, self._enqueue_signal)
            for wid in worker_ids(self.config, _START_ORDER):
                args = WorkerArgs(wid, self.config, names, limits, self.class_names)
                self.workers[wid] = WorkerProcess(args, self.control, self.config.watchdog)
                self.workers[wid].start()
            shown = [f"{s.name}={redact_uri(s.uri)}" for s in self.config.sources]
            log.info("supervisor.started", sources=shown, model=str(self.config.model.path),
                     db=str(self.config.store.path))
            self.system_log.add("start", sources=shown, model=str(self.config.model.path))
            self._loop()
            self._shutdown()
        finally:
            for worker in self.workers.values():
                worker.kill()
            self.system_log.add("stop", code=int(self.exit_code))
            self.system_log.flush()
            self.reporter.close()
            for segment in self.segments:
                segment.unlink()
            self.notifier.close()
        log.info("supervisor.exited", code=int(self.exit_code))
        return int(self.exit_code)

    def _loop(self) -> None:
        started = time.monotonic()
        while not self.should_exit:
            self._handle_signals()
            self._reap()
            self._watch()
            self.governor.tick()
            self.reporter.tick(self.workers, self._healthy())
            if self.workers[WorkerId(Worker.SINK)].state == WorkerState.RUNNING:
                self.system_log.flush()
            if self.options.duration_s is not None and \
                    time.monotonic() - started >= self.options.duration_s:
                log.info("supervisor.duration_reached", seconds=self.options.duration_s)
                self.should_exit = True
            time.sleep(_TICK_S)

    def _handle_signals(self) -> None:
        while not self.signals.empty():
            signum = self.signals.get_nowait()
            if signum == signal.SIGHUP:
                self._reload()
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

    def _watch(self) -> None:
        now_ns = time.monotonic_ns()
        for worker in self.workers.values():
            worker.enforce_kill_deadline()
            if worker.alive and worker.kill_at is None and \
                    (reason := stall_reason(self.control, worker.kind, self.config.watchdog,
                                            now_ns)):
                worker.terminate(reason)

    def _sizes_supported(self, config: Config | None = None) -> bool:
        return self.facts.dynamic or bool((config or self.config).models)

    def _healthy(self) -> bool:
        """False withholds WATCHDOG=1: a worker has been unhealthy past its budget."""
        budget = self.config.watchdog.unhealthy_budget_s
        return all(w.state != WorkerState.FATAL and w.unhealthy_for() <= budget
                   for w in self.workers.values())

    def _on_exit(self, worker: WorkerProcess) -> None:
        code = worker.exitcode
        if worker.planned:
            worker.start()
            return
        if worker.kind == Worker.CAPTURE and code == 0 and worker.stall is None:
            source = self.config.sources[worker.id.index]
            log.info("supervisor.source_finished", source=source.name,
                     frames=self.control.get(worker.id, Slot.PROGRESS))
            worker.set_state(WorkerState.EXITED)
            captures = [w for w in self.workers.values() if w.kind == Worker.CAPTURE]
            if all(w.state == WorkerState.EXITED for w in captures):
                self.should_exit, self.drain = True, True  # every source is done: drain
            return
        if code == ExitCode.UNAVAILABLE:
            log.error("supervisor.worker_unavailable", worker=worker.name,
                      hint="see the worker's error above; not restarting")
            worker.set_state(WorkerState.FATAL)
            self.exit_code, self.should_exit = ExitCode.UNAVAILABLE, True
            return
        reason = worker.exit_reason()
        self.system_log.add("restart", worker=worker.name, reason=reason,
                            restarts=worker.total_restarts + 1)
        if not worker.schedule_restart():
            log.error("supervisor.crash_loop", worker=worker.name, reason=reason,
                      restarts=len(worker.restarts), window_s=worker.cfg.restart_window_s)
            self.system_log.add("crash_loop", worker=worker.name, reason=reason)
            self.exit_code, self.should_exit = ExitCode.SOFTWARE, True
            return
        log.warning("worker.restarting", worker=worker.name, reason=reason,
                    retry_in_s=round(worker.next_start - time.monotonic(), 2),
                    restarts=worker.total_restarts)

    # -- reload --------------------------------------------------------------------------
    def _reload(self) -> None:
        self.notifier.reloading()
        try:
            new, facts = self.preflight(load_config(self.config_path).config)
            names = facts.names
            plan = plan_reload(self.config, new)
            if not plan.ok:
                raise ConfigError(f"{', '.join(plan.refused)} cannot change while edged "
                                  "runs; restart edged to apply")
        except Exception as exc:  # any reason to refuse keeps the running config
            log.error("supervisor.reload_failed", error=str(exc), kept="previous config")
            self.system_log.add("reload_failed", error=str(exc))
            self.notifier.ready()
            return
        if tuple(names) != self.class_names:
            plan.restart.add(WorkerId(Worker.SINK))  # the sink labels events by class id
        if new.thermal != self.config.thermal or facts.dynamic != self.facts.dynamic:
            self.facts = facts
            self.governor.reconfigure(new.thermal, self._sizes_supported(new))
        self.config, self.class_names, self.facts = new, tuple(names), facts
        generation = self.reloads.publish(new)
        self.control.put(Counter.CONFIG_GENERATION, generation)
        for worker in self.workers.values():
            worker.args = dataclasses.replace(worker.args, config=new, class_names=self.class_names,
                                              config_generation=generation)
            worker.cfg = new.watchdog
        for wid in plan.restart & self.workers.keys():  # an uplink may not be running
            self.workers[wid].terminate("config reload", planned=True)
        self.reporter.config = new
        log.info("supervisor.reloaded", changed=plan.changed,
                 restarted=sorted(w.title for w in plan.restart))
        self.system_log.add("reload", changed=plan.changed,
                            restarted=sorted(w.title for w in plan.restart))
        self.notifier.ready()

    # -- shutdown ------------------------------------------------------------------------
    def _shutdown(self) -> None:
        self.notifier.stopping()
        deadline = time.monotonic() + self.config.daemon.stop_timeout_s
        log.info("supervisor.stopping", drain=self.drain)
        for wid in worker_ids(self.config, _STOP_ORDER):
            worker = self.workers[wid]
            if not worker.alive:
                continue
            # Inference drains the frame rings only when the sources ended by themselves
            # (files, --max-frames); on a signal it finishes the frame in hand.
            worker.request_stop(drain=self.drain and wid.kind == Worker.INFERENCE)
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

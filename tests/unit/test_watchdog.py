"""Stall detection, back-off and crash-loop budget, on a real control block and a fake clock."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edged.config import Config, ModelConfig, SourceConfig, WatchdogConfig
from edged.ipc.control import ControlBlock, Slot, Worker, WorkerId, WorkerState
from edged.ipc.segment import new_run_id, segment_name
from edged.reload import plan_reload
from edged.watchdog import WorkerProcess, stall_reason
from edged.workers.base import IpcNames, RunLimits, WorkerArgs

S = 1_000_000_000  # ns per second
CFG = WatchdogConfig(inference_stall_s=5, startup_grace_s=60, inference_timeout_s=8,
                     backoff_initial_s=1, backoff_max_s=4, max_restarts=3, restart_window_s=60)


@pytest.fixture()
def control() -> Iterator[ControlBlock]:
    segment = ControlBlock.create(segment_name(new_run_id(), "control"))
    yield ControlBlock(segment)
    segment.unlink()


def _at(control: ControlBlock, state: WorkerState, beat_s: float, busy_s: float = 0) -> None:
    control.set(Worker.INFERENCE, Slot.STATE, state)
    control.set(Worker.INFERENCE, Slot.HEARTBEAT_NS, int(beat_s * S))
    control.set(Worker.INFERENCE, Slot.BUSY_SINCE_NS, int(busy_s * S))


def test_fresh_heartbeat_is_healthy_old_one_is_stalled(control: ControlBlock) -> None:
    _at(control, WorkerState.RUNNING, beat_s=100)
    assert stall_reason(control, Worker.INFERENCE, CFG, 104 * S) is None
    reason = stall_reason(control, Worker.INFERENCE, CFG, 106 * S)
    assert reason == "stalled: no heartbeat for 6.0 s while running"


def test_starting_worker_gets_the_startup_grace(control: ControlBlock) -> None:
    _at(control, WorkerState.STARTING, beat_s=100)
    assert stall_reason(control, Worker.INFERENCE, CFG, 150 * S) is None
    assert "while starting" in (stall_reason(control, Worker.INFERENCE, CFG, 161 * S) or "")


def test_one_inference_running_too_long_is_a_stall(control: ControlBlock) -> None:
    _at(control, WorkerState.RUNNING, beat_s=100, busy_s=100)
    assert stall_reason(control, Worker.INFERENCE, CFG, 104 * S) is None
    assert "one inference running for 9.0 s" in (
        stall_reason(control, Worker.INFERENCE, CFG, 109 * S) or "")


def test_stopped_or_backing_off_workers_are_not_judged(control: ControlBlock) -> None:
    for state in (WorkerState.BACKOFF, WorkerState.STOPPING, WorkerState.EXITED):
        _at(control, state, beat_s=0)
        assert stall_reason(control, Worker.INFERENCE, CFG, 1000 * S) is None


def _handle(control: ControlBlock, clock: list[float]) -> WorkerProcess:
    config = Config(source=SourceConfig(uri="x.avi"), model=ModelConfig(path=Path("m.onnx")))
    args = WorkerArgs(WorkerId(Worker.SINK), config, IpcNames("c", ("f",), "r", "k"),
                      RunLimits(), ())
    return WorkerProcess(args, control, CFG, clock=lambda: clock[0])


def test_backoff_doubles_up_to_its_cap_then_the_budget_runs_out(control: ControlBlock) -> None:
    clock = [1000.0]
    worker = _handle(control, clock)
    delays = []
    for _ in range(3):
        assert worker.schedule_restart()
        delays.append(worker.next_start - clock[0])
        clock[0] += 5
    assert delays == [1, 2, 4]
    assert worker.state == WorkerState.BACKOFF
    assert not worker.schedule_restart(), "a 4th restart within 60 s is a crash loop"
    assert worker.state == WorkerState.FATAL


def test_restarts_outside_the_window_are_forgotten(control: ControlBlock) -> None:
    clock = [0.0]
    worker = _handle(control, clock)
    for _ in range(10):
        assert worker.schedule_restart()
        clock[0] += 61
    assert worker.total_restarts == 10


def test_reload_plan_live_restart_and_refused() -> None:
    base = Config(source=SourceConfig(uri="/v.avi"), model=ModelConfig(path=Path("/m.onnx")))
    live = base.model_copy(update={"detect": base.detect.model_copy(update={"conf": 0.7})})
    plan = plan_reload(base, live)
    assert plan.ok and plan.changed == ["detect.conf"] and not plan.restart
    moved = base.model_copy(update={"model": base.model.model_copy(
        update={"path": Path("/other.onnx")})})
    assert plan_reload(base, moved).restart == {WorkerId(Worker.INFERENCE)}
    bigger = base.model_copy(update={"queues": base.queues.model_copy(
        update={"frame_slots": 8})})
    assert plan_reload(base, bigger).refused == ["queues.frame_slots"]
    camera = base.model_copy(update={"sources": [base.sources[0].model_copy(
        update={"fps": 5.0})]})
    assert plan_reload(base, camera).restart == {WorkerId(Worker.CAPTURE, 0)}
    roi = base.model_copy(update={"sources": [base.sources[0].model_copy(
        update={"classes": ["person"]})]})
    assert plan_reload(base, roi).ok and not plan_reload(base, roi).restart

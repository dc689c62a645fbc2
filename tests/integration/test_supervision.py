"""Supervision on the real pipeline: sd_notify over a real datagram socket, stalls, crashes,
a camera that vanishes, reloads. Deadlines are generous; measured times go to the log."""

from __future__ import annotations

import itertools
import os
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from edged.exitcodes import ExitCode
from tests.integration.conftest import Daemon, MjpegServer, NotifySocket

pytestmark = pytest.mark.slow

FAST_WATCHDOG = {"inference_stall_s": 2.0, "capture_stall_s": 12.0, "sink_stall_s": 3.0,
                 "kill_grace_s": 1.0, "backoff_initial_s": 0.2, "inference_timeout_s": 3.0}


@pytest.fixture()
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


def _spawned(daemon: Daemon, worker: str) -> list[int]:
    return [e["pid"] for e in daemon.find("worker.spawned") if e["worker"] == worker]


def _paced(pipeline_config: Callable[..., Path], **extra: dict[str, Any]) -> Path:
    sections: dict[str, dict[str, Any]] = {
        "source": {"mode": "paced", "loop": True, "fps": 15},
        "watchdog": FAST_WATCHDOG,
        "store": {"record_detections": True},
    }
    for key, values in extra.items():
        sections.setdefault(key, {}).update(values)
    return pipeline_config(**sections)


def _notify_env(sock: NotifySocket, watchdog_usec: int = 1_000_000) -> dict[str, str]:
    return {"NOTIFY_SOCKET": str(sock.path), "WATCHDOG_USEC": str(watchdog_usec)}


def _max_gap(times: list[float], start: float, end: float) -> float:
    window = [start, *[t for t in times if start <= t <= end], end]
    return max(b - a for a, b in itertools.pairwise(window))


def test_ready_after_first_inference_and_watchdog_through_a_stall(
    pipeline_config: Callable[..., Path], daemons: list[Daemon], notify: NotifySocket
) -> None:
    daemon = Daemon(_paced(pipeline_config), env=_notify_env(notify))
    daemons.append(daemon)
    daemon.wait_for(lambda: bool(notify.times("READY=1")), 60, "READY=1")
    ready_at = notify.times("READY=1")[0]
    assert daemon.find("supervisor.ready")[0]["first_frame_inferred"] is True
    assert notify.times("EXTEND_TIMEOUT_USEC="), "start-up is extended while the model loads"
    assert all(t <= ready_at for t in notify.times("EXTEND_TIMEOUT_USEC="))

    inference = _spawned(daemon, "inference")[0]
    stalled_at = time.monotonic()
    os.kill(inference, signal.SIGSTOP)
    daemon.wait_for(lambda: len(_spawned(daemon, "inference")) == 2, 30, "inference respawn")
    daemon.wait_for(lambda: bool(daemon.find("status")) and
                    daemon.find("status")[-1]["fps_out"] > 0 and
                    daemon.find("worker.stalled") != [], 60, "frames flowing again")
    recovered_at = time.monotonic()
    stall = daemon.find("worker.stalled")[0]
    assert stall["worker"] == "inference" and "no heartbeat" in stall["reason"]
    print(f"inference SIGSTOP -> pipeline flowing again: {recovered_at - stalled_at:.1f} s")
    gap = _max_gap(notify.times("WATCHDOG=1"), ready_at, recovered_at)
    print(f"largest WATCHDOG=1 gap while healing: {gap:.2f} s (interval 0.33 s)")
    assert gap < 1.5, "WATCHDOG=1 must keep flowing while a worker is healed"

    # A wedged supervisor stops the pings, so systemd's WatchdogSec would fire.
    os.kill(daemon.proc.pid, signal.SIGSTOP)
    time.sleep(2.0)
    wedged_until = time.monotonic()
    os.kill(daemon.proc.pid, signal.SIGCONT)
    assert _max_gap(notify.times("WATCHDOG=1"), wedged_until - 2.0, wedged_until) >= 1.9
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.wait(30) == 0
    assert notify.times("STOPPING=1")


def test_camera_drop_reconnects_without_restart_and_status_tracks_fps(
    pipeline_config: Callable[..., Path], daemons: list[Daemon], notify: NotifySocket,
    sample_video: Path,
) -> None:
    camera = MjpegServer(sample_video)
    camera.start()
    try:
        config = pipeline_config(
            source={"uri": camera.url, "mode": "paced", "timeout_s": 2.0,
                    "reconnect_initial_s": 0.2, "reconnect_max_s": 1.0},
            watchdog=FAST_WATCHDOG, daemon={"status_interval_s": 0.5})
        daemon = Daemon(config, env=_notify_env(notify))
        daemons.append(daemon)
        daemon.wait_for(lambda: any("fps" in s and not s.startswith("fps 0.0/")
                                    for _, s in notify.statuses()), 60, "fps > 0 in STATUS")
        camera.stop()
        dropped_at = time.monotonic()
        daemon.wait_for(lambda: any(t > dropped_at + 1 and "/0.0 " in s and "source down" in s
                                    for t, s in notify.statuses()), 30, "fps 0 in STATUS")
        camera.start()
        back_at = time.monotonic()
        daemon.wait_for(lambda: any(t > back_at and "source up" in s and "/0.0 " not in s
                                    for t, s in notify.statuses()), 60, "frames again")
        print(f"camera back -> frames flowing: {time.monotonic() - back_at:.1f} s")
        assert len(_spawned(daemon, "capture")) == 1, "a reconnect is not a worker restart"
        assert daemon.find("capture.source_lost") or daemon.find("capture.reconnecting")
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.wait(30) == 0
    finally:
        camera.stop()


@pytest.mark.parametrize("worker", ["capture", "inference", "sink"])
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGSTOP])
def test_fault_matrix_worker_is_replaced_and_events_flow_again(
    pipeline_config: Callable[..., Path], daemons: list[Daemon], tmp_path: Path,
    worker: str, how: signal.Signals,
) -> None:
    daemon = Daemon(_paced(pipeline_config))
    daemons.append(daemon)
    daemon.wait_for(lambda: bool(daemon.find("supervisor.ready")), 60, "ready")
    daemon.wait_for(lambda: bool(daemon.find("status")), 30, "a status line")
    victim = _spawned(daemon, worker)[0]
    hit_at = time.monotonic()
    os.kill(victim, how)
    daemon.wait_for(lambda: len(_spawned(daemon, worker)) == 2, 30, f"{worker} respawn")
    db = tmp_path / "events.db"

    def detections() -> int:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            return int(conn.execute("SELECT count(*) FROM detections").fetchone()[0])

    baseline = detections()
    daemon.wait_for(lambda: detections() > baseline, 60, "new detections committed")
    print(f"{worker} {how.name} -> committing again: {time.monotonic() - hit_at:.1f} s")
    restart = daemon.find("worker.restarting")[0]
    assert restart["worker"] == worker
    expected = "stalled" if how == signal.SIGSTOP else "killed by signal SIGKILL"
    assert expected in restart["reason"]
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.wait(30) == 0
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        kinds = [r[0] for r in conn.execute("SELECT kind FROM system_events")]
    assert "restart" in kinds


def test_repeated_crashes_exit_70(
    pipeline_config: Callable[..., Path], daemons: list[Daemon]
) -> None:
    daemon = Daemon(_paced(pipeline_config, watchdog={"max_restarts": 2}))
    daemons.append(daemon)
    daemon.wait_for(lambda: bool(daemon.find("supervisor.ready")), 60, "ready")
    for round_ in range(3):
        daemon.wait_for(lambda n=round_: len(_spawned(daemon, "sink")) == n + 1, 30,
                        "sink running")
        time.sleep(0.5)
        os.kill(_spawned(daemon, "sink")[-1], signal.SIGKILL)
    assert daemon.wait(60) == ExitCode.SOFTWARE
    assert daemon.find("supervisor.crash_loop")


def test_corrupt_model_is_exit_69_not_a_loop(
    pipeline_config: Callable[..., Path], daemons: list[Daemon], tmp_path: Path,
    default_model: Path,
) -> None:
    # Valid protobuf header, truncated body: passes nothing but the file-exists check.
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(default_model.read_bytes()[: 1_000_000])
    daemon = Daemon(pipeline_config(model={"path": str(broken)}))
    daemons.append(daemon)
    assert daemon.wait(60) == ExitCode.UNAVAILABLE
    assert not daemon.find("worker.restarting")


def test_sighup_broken_config_keeps_running(
    pipeline_config: Callable[..., Path], daemons: list[Daemon]
) -> None:
    config = _paced(pipeline_config)
    daemon = Daemon(config)
    daemons.append(daemon)
    daemon.wait_for(lambda: bool(daemon.find("supervisor.ready")), 60, "ready")
    good = config.read_text()
    config.write_text(good + "detect:\n  bogus: 1\n")
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_for(lambda: bool(daemon.find("supervisor.reload_failed")), 20, "reload error")
    assert "bogus" in daemon.find("supervisor.reload_failed")[0]["error"]
    assert daemon.proc.poll() is None
    seen = len(daemon.find("status"))
    daemon.wait_for(lambda: len(daemon.find("status")) > seen + 1, 20, "still reporting")
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.wait(30) == 0


def test_sighup_changed_confidence_applies_live(
    pipeline_config: Callable[..., Path], daemons: list[Daemon], tmp_path: Path
) -> None:
    config = _paced(pipeline_config)
    daemon = Daemon(config)
    daemons.append(daemon)
    daemon.wait_for(lambda: bool(daemon.find("supervisor.ready")), 60, "ready")
    capture_pid = _spawned(daemon, "capture")[0]
    sections = yaml.safe_load(config.read_text())
    sections["detect"] = {"conf": 0.8}
    config.write_text(yaml.safe_dump(sections))
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_for(lambda: bool(daemon.find("supervisor.reloaded")), 20, "reload")
    reloaded_wall = time.time()
    daemon.wait_for(lambda: any(s["conf"] == 0.8 for s in daemon.find("status")), 20,
                    "new conf in status")
    time.sleep(2)
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.wait(30) == 0
    assert _spawned(daemon, "capture") == [capture_pid]
    applied = [e for e in daemon.find("inference.settings") if e["conf"] == 0.8]
    assert applied
    with sqlite3.connect(tmp_path / "events.db") as conn:
        late = conn.execute("SELECT min(score), count(*) FROM detections WHERE ts > ?",
                            (reloaded_wall + 0.5,)).fetchone()
    assert late[1] > 0 and late[0] >= 0.8

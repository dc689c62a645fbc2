"""The `edged` command as a user runs it: exit codes, one-line errors, JSON outputs."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from edged.exitcodes import ExitCode
from tests.integration.conftest import EDGED, Daemon


def edged(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EDGED, *args], capture_output=True, text=True, timeout=timeout)


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_unknown_key_exits_78_naming_file_and_key(
    pipeline_config: Callable[..., Path]
) -> None:
    config = pipeline_config(detect={"confidence": 0.5})
    result = edged("run", "--config", str(config))
    assert result.returncode == ExitCode.CONFIG
    line = _one_line_error(result)
    assert str(config) in line and "detect.confidence" in line and "unknown key" in line


def test_wrong_type_exits_78(pipeline_config: Callable[..., Path]) -> None:
    config = pipeline_config(queues={"frame_slots": "many"})
    result = edged("check-config", str(config))
    assert result.returncode == ExitCode.CONFIG
    assert "queues.frame_slots" in _one_line_error(result)


def test_missing_model_exits_69(pipeline_config: Callable[..., Path], tmp_path: Path) -> None:
    config = pipeline_config(model={"path": str(tmp_path / "gone.onnx")})
    result = edged("run", "--config", str(config))
    assert result.returncode == ExitCode.UNAVAILABLE
    assert "gone.onnx: model file not found" in _one_line_error(result)


def test_corrupt_model_exits_69(pipeline_config: Callable[..., Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 1000)
    result = edged("run", "--config", str(pipeline_config(model={"path": str(bad)})))
    assert result.returncode == ExitCode.UNAVAILABLE
    assert "bad.onnx: not a valid ONNX model" in _one_line_error(result)


def test_missing_video_exits_69(pipeline_config: Callable[..., Path], tmp_path: Path) -> None:
    config = pipeline_config(source={"uri": str(tmp_path / "none.avi")})
    result = edged("run", "--config", str(config))
    assert result.returncode == ExitCode.UNAVAILABLE
    assert "video file not found" in _one_line_error(result)


def test_class_allow_list_must_name_model_classes(pipeline_config: Callable[..., Path]) -> None:
    result = edged("run", "--config", str(pipeline_config(source={"classes": ["persn"]})))
    assert result.returncode == ExitCode.CONFIG
    assert "persn" in _one_line_error(result)


def test_check_config_prints_the_effective_config(pipeline_config: Callable[..., Path]) -> None:
    result = edged("check-config", str(pipeline_config()))
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout.split("\n", 1)[1])
    assert body["detect"]["conf"] == 0.5 and body["sources"][0]["mode"] == "lossless"


def test_credentials_never_reach_the_logs(
    pipeline_config: Callable[..., Path], daemons: list[Daemon]
) -> None:
    config = pipeline_config(source={"uri": "rtsp://admin:hunter2@127.0.0.1:9/cam",
                                     "mode": "paced", "reconnect_initial_s": 0.2})
    daemon = Daemon(config)
    daemons.append(daemon)
    daemon.wait_for(lambda: len(daemon.find("capture.reconnecting")) >= 2, 90,
                    "an absent camera is retried, not fatal")
    daemon.proc.terminate()
    assert daemon.wait(30) == 0
    log = daemon.log_path.read_text()
    assert "hunter2" not in log
    assert "rtsp://admin:***@127.0.0.1:9/cam" in log


def test_detect_finds_people_on_a_photo(default_model: Path, data_dir: Path) -> None:
    result = edged("detect", str(data_dir / "media" / "zidane.jpg"), "--model",
                   str(default_model), "--json")
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)["frames"][0]["detections"]
    assert sum(d["label"] == "person" for d in found) >= 2


def test_detect_unreadable_input_exits_66(default_model: Path, tmp_path: Path) -> None:
    result = edged("detect", str(tmp_path / "nothing.jpg"), "--model", str(default_model))
    assert result.returncode == ExitCode.NOINPUT
    assert "cannot read image" in _one_line_error(result)


@pytest.mark.slow
def test_bench_model_reports_both_sizes(default_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = edged("bench", "model", "--model", str(default_model), "--sizes", "416,320",
                   "--runs", "5", "--warmup", "1", "--threads", "1", "--out", str(out))
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    text = json.dumps(report)
    for key in ("mean_ms", "std_ms", "p50_ms", "p95_ms", "fps"):
        assert key in text
    assert "416" in result.stdout and "320" in result.stdout


def test_events_lists_what_a_run_stored(
    pipeline_config: Callable[..., Path], daemons: list[Daemon], tmp_path: Path
) -> None:
    daemon = Daemon(pipeline_config(), "--max-frames", "20")
    daemons.append(daemon)
    assert daemon.wait(120) == 0
    db = str(tmp_path / "events.db")
    result = edged("events", "--db", db, "--label", "person", "--since", "10m", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert rows and all(row["label"] == "person" for row in rows)
    text = edged("events", "--db", db, "--limit", "3")
    assert text.returncode == 0 and len(text.stdout.strip().splitlines()) == 3


def test_version() -> None:
    result = edged("version")
    assert result.returncode == 0 and result.stdout.startswith("edged ")


def test_status_reads_the_running_daemon_and_exits_3_when_stopped(
    pipeline_config: Callable[..., Path], daemons: list[Daemon], tmp_path: Path
) -> None:
    config = pipeline_config(source={"mode": "paced", "loop": True})
    run_dir = tmp_path / "run"
    daemon = Daemon(config)
    daemons.append(daemon)
    daemon.wait_for(lambda: bool(daemon.find("supervisor.ready")), 60, "ready")
    result = edged("status", "--runtime-dir", str(run_dir), "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["pid"] == daemon.proc.pid
    assert set(doc["workers"]) == {"capture", "inference", "sink"}
    for worker in doc["workers"].values():
        assert worker["state"] in ("starting", "running") and worker["pid"] > 0
    text = edged("status", "--runtime-dir", str(run_dir))
    assert "inference" in text.stdout and "heartbeat" not in text.stderr
    daemon.proc.terminate()
    assert daemon.wait(30) == 0
    stopped = edged("status", "--runtime-dir", str(run_dir))
    assert stopped.returncode == 3 and "not running" in stopped.stderr


def test_thermal_reads_a_sysfs_tree(tmp_path: Path, default_model: Path,
                                    sample_video: Path) -> None:
    zone = tmp_path / "sys" / "class" / "thermal" / "thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "type").write_text("cpu-thermal\n")
    (zone / "temp").write_text("71500\n")
    config = tmp_path / "edged.yaml"
    config.write_text(f"source:\n  uri: {sample_video}\nmodel:\n  path: {default_model}\n"
                      f"thermal:\n  sysfs_root: {tmp_path / 'sys'}\n")
    result = edged("thermal", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "cpu-thermal" in result.stdout and "71.5 C" in result.stdout
    assert "high 416px" in result.stdout, "the ladder is fitted to the 416-native model"


@pytest.mark.slow
def test_bench_pipeline_reports_each_mode(pipeline_config: Callable[..., Path],
                                          tmp_path: Path) -> None:
    out = tmp_path / "pipeline.json"
    result = edged("bench", "pipeline", "--config", str(pipeline_config()), "--frames", "15",
                   "--modes", "high,low", "--threads", "1", "--out", str(out), timeout=300)
    assert result.returncode == 0, result.stderr + result.stdout
    modes = json.loads(out.read_text())["modes"]
    assert [m["mode"] for m in modes] == ["high", "low"]
    assert [m["input_size"] for m in modes] == [416, 256]
    for m in modes:
        assert m["frames"] == 15 and m["pipeline_fps"] > 0 and m["cpu_percent"] > 0
        assert m["infer_ms_mean"] > 0 and {"inference", "capture", "sink"} <= m["rss_mb"].keys()
    assert modes[1]["inferred"] < modes[0]["inferred"], "low mode skips frames"

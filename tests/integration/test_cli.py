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
    assert body["detect"]["conf"] == 0.5 and body["source"]["mode"] == "lossless"


def test_credentials_never_reach_the_logs(
    pipeline_config: Callable[..., Path], daemons: list[Daemon]
) -> None:
    config = pipeline_config(source={"uri": "rtsp://admin:hunter2@127.0.0.1:9/cam",
                                     "mode": "paced", "reconnect_initial_s": 0.2})
    daemon = Daemon(config, "--duration", "4")
    daemons.append(daemon)
    assert daemon.wait(60) == 0
    log = daemon.log_path.read_text()
    assert "hunter2" not in log
    assert "rtsp://admin:***@127.0.0.1:9/cam" in log
    assert daemon.find("capture.reconnecting"), "an absent camera is retried, not fatal"


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

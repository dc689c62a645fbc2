"""Each backend selected in config runs the real daemon end to end; a backend that cannot run
here stops it with exit 69 and the reason (issue 6, done-when 4)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import cv2
import pytest

from edged.backends.select import tensorrt_problem
from tests import artifacts
from tests.integration.conftest import Daemon

pytestmark = pytest.mark.slow
FRAMES = "40"


@pytest.fixture(scope="session")
def ncnn_model(tmp_path_factory: pytest.TempPathFactory, default_model: Path) -> Path:
    return artifacts.ncnn_model(tmp_path_factory, default_model)


@pytest.fixture(scope="session")
def static_int8(tmp_path_factory: pytest.TempPathFactory, default_model: Path,
                sample_video: Path) -> Path:
    return artifacts.int8_model(tmp_path_factory, default_model, sample_video, "static")


def _events(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return int(conn.execute("SELECT count(*) FROM events WHERE label = 'person'")
                   .fetchone()[0])


def _run(config: Path, daemons: list[Daemon]) -> Daemon:
    daemon = Daemon(config, "--max-frames", FRAMES)
    daemons.append(daemon)
    assert daemon.wait(240) == 0, daemon.log_path.read_text()[-3000:]
    return daemon


@pytest.mark.parametrize("backend, size", [("ncnn", 416), ("ncnn", 320), ("onnxruntime", 416),
                                           ("auto", 416)])
def test_backend_from_config_runs_the_pipeline(
    backend: str, size: int, ncnn_model: Path, pipeline_config: Callable[..., Path],
    daemons: list[Daemon], tmp_path: Path
) -> None:
    config = pipeline_config(model={"path": str(ncnn_model), "backend": backend,
                                    "input_size": size, "ncnn_threads": 1})
    daemon = _run(config, daemons)
    selected = daemon.find("backend.selected")
    expected = "onnxruntime" if backend == "auto" else backend  # x86: auto never picks NCNN
    assert selected and {e["backend"] for e in selected} == {expected}
    assert selected[0]["reason"].startswith("auto: " if backend == "auto" else "model.backend")
    loaded = daemon.find("backend.loaded")[0]
    assert loaded["input_size"] == size
    assert daemon.find("inference.stopped")[0]["inferred"] == int(FRAMES)
    assert _events(tmp_path / "events.db") >= 3


def test_int8_static_model_runs_the_pipeline(
    static_int8: Path, pipeline_config: Callable[..., Path], daemons: list[Daemon],
    tmp_path: Path
) -> None:
    config = pipeline_config(model={"path": str(static_int8), "backend": "onnxruntime"})
    _run(config, daemons)
    assert _events(tmp_path / "events.db") >= 3


def test_ncnn_without_a_twin_exits_69(
    tmp_path: Path, default_model: Path, pipeline_config: Callable[..., Path],
    daemons: list[Daemon]
) -> None:
    lone = tmp_path / "lone.onnx"
    lone.symlink_to(default_model)
    daemon = Daemon(pipeline_config(model={"path": str(lone), "backend": "ncnn"}))
    daemons.append(daemon)
    assert daemon.wait(120) == 69
    log = daemon.log_path.read_text()
    assert "no NCNN twin for input size 416" in log and "convert-ncnn" in log


@pytest.mark.skipif(tensorrt_problem() is None, reason="TensorRT runs on this machine")
def test_tensorrt_unavailable_exits_69_with_the_reason(
    pipeline_config: Callable[..., Path], daemons: list[Daemon]
) -> None:
    daemon = Daemon(pipeline_config(model={"backend": "tensorrt"}))
    daemons.append(daemon)
    assert daemon.wait(120) == 69
    log = daemon.log_path.read_text()
    assert "model.backend is 'tensorrt' but" in log
    assert "backend.loaded" not in log  # no silent fallback to another backend


@pytest.mark.tensorrt
def test_tensorrt_runs_the_pipeline(
    pipeline_config: Callable[..., Path], daemons: list[Daemon], tmp_path: Path
) -> None:
    pytest.importorskip("tensorrt", reason="TensorRT is not installed here")
    config = pipeline_config(model={"backend": "tensorrt", "trt_precision": "fp16",
                                    "cache_dir": str(tmp_path / "cache")},
                             watchdog={"startup_grace_s": 1800})
    daemon = _run(config, daemons)
    assert daemon.find("backend.loaded")[0]["backend"] == "tensorrt"
    assert _events(tmp_path / "events.db") >= 3


def _cli(*args: str) -> tuple[int, str]:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "edged.cli_tools", *args],
                          capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stdout + proc.stderr


def test_cli_convert_eval_and_bench_variants(
    tmp_path: Path, default_model: Path, sample_video: Path, ncnn_model: Path
) -> None:
    model = tmp_path / "m.onnx"
    model.symlink_to(default_model)
    code, out = _cli("model", "convert-ncnn", str(model), "--sizes", "320")
    assert code == 0, out
    assert (tmp_path / "m.320.ncnn.param").is_file() and "wrote" in out
    code, out = _cli("eval", str(ncnn_model), "--backend", "ncnn", "--size", "320",
                     "--reference", str(default_model), "--video", str(sample_video),
                     "--range", "600:700:25", "--json")
    assert code == 0, out
    import json

    result = json.loads(out[out.index("{"):])
    assert result["frames"] == 4 and result["map50"] >= 0.9
    report = tmp_path / "bench.json"
    code, out = _cli("bench", "model", "--model", str(model), "--variants", "fp32,ncnn",
                     "--sizes", "320", "--runs", "3", "--warmup", "1", "--threads", "1",
                     "--eval-video", str(sample_video), "--eval-range", "700:760:30",
                     "--out", str(report))
    assert code == 0, out
    doc = json.loads(report.read_text())
    rows = {r["variant"]: r for r in doc["sizes"][0]["rows"]}
    assert set(rows) == {"fp32", "ncnn"} and rows["fp32"]["speedup_p50"] == 1.0
    assert rows["ncnn"]["agreement"]["map50"] >= 0.9
    png = cv2.imread(str(report.with_suffix(".png")))
    assert png is not None and png.shape[1] == 1100
    assert "agreement" in out and " 320  ncnn" in out


def test_cli_errors_are_one_line_with_exit_codes(tmp_path: Path, default_model: Path) -> None:
    code, out = _cli("quantize", str(default_model), "--mode", "static",
                     "--out", str(tmp_path / "x.onnx"))
    assert code == 69 and "calibration frames" in out and "Traceback" not in out
    code, out = _cli("build-engine", str(default_model), "--cache-dir", str(tmp_path))
    if tensorrt_problem() is not None:
        assert code == 69 and "TensorRT 10 and pycuda are needed" in out
    code, out = _cli("eval", str(default_model), "--reference", str(default_model))
    assert code == 64 and "--video" in out


def test_edged_cli_has_the_tool_commands() -> None:
    from edged.cli import build_parser

    parser = build_parser()
    for argv in (["quantize", "m.onnx"], ["eval", "m.onnx", "--reference", "r.onnx"],
                 ["build-engine", "m.onnx"], ["model", "convert-ncnn", "m.onnx"],
                 ["bench", "model", "--variants", "fp32,ncnn"]):
        assert callable(parser.parse_args(argv).func)

"""A short real benchmark returns the documented structure (no timing assertions)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edged.config import ModelConfig
from edged.tools.bench import bench_model, format_bench_table

TIMING_KEYS = {"mean_ms", "std_ms", "p50_ms", "p95_ms", "min_ms", "max_ms"}


def test_short_bench_on_the_default_model(default_model: Path, sample_photos: list[Path]) -> None:
    model = ModelConfig(path=default_model, intra_op_threads=1)
    result = bench_model(model, [320, 256], runs=3, warmup=1, image=sample_photos[0])
    json.dumps(result)  # must be serialisable as is

    assert result["runs"] == 3 and result["warmup"] == 1
    assert result["provider"] == "CPUExecutionProvider"
    assert result["intra_op_threads"] == 1
    machine = result["machine"]
    assert machine["cpu_model"] and machine["cores_logical"] >= 1 and machine["onnxruntime"]
    assert result["image"]["width"] == 810 and result["image"]["height"] == 1080

    assert [row["size"] for row in result["sizes"]] == [320, 256]
    for row in result["sizes"]:
        assert row.keys() >= TIMING_KEYS
        assert row["mean_ms"] > 0 and row["p50_ms"] > 0 and row["p95_ms"] > 0
        assert row["std_ms"] >= 0 and row["fps"] > 0
        assert row["fps"] == pytest.approx(1000 / row["mean_ms"], rel=1e-2)
        for part in ("letterbox_ms", "decode_nms_ms"):
            assert row[part].keys() >= TIMING_KEYS and row[part]["mean_ms"] > 0
        assert row["pipeline_fps"] > 0 and row["layout"] == "yolov5"
        assert row["detections"] >= 0 and row["candidates"] >= row["detections"]

    table = format_bench_table(result)
    assert "320" in table and "256" in table and "CPUExecutionProvider" in table


def test_synthetic_image_when_none_given(yolov8_model: Path) -> None:
    result = bench_model(ModelConfig(path=yolov8_model), [640], runs=1, warmup=0, image=None)
    assert result["image"]["source"] == "synthetic noise"
    assert result["sizes"][0]["layout"] == "yolov8"


def test_fixed_model_rejects_other_sizes(yolov8_model: Path) -> None:
    with pytest.raises(ValueError, match="fixed at 640x640"):
        bench_model(ModelConfig(path=yolov8_model), [320], runs=1, warmup=0, image=None)


def test_bad_arguments(yolov8_model: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="runs"):
        bench_model(ModelConfig(path=yolov8_model), [640], runs=0, warmup=0, image=None)
    with pytest.raises(ValueError, match="cannot read image"):
        bench_model(ModelConfig(path=yolov8_model), [640], runs=1, warmup=0,
                    image=tmp_path / "none.jpg")

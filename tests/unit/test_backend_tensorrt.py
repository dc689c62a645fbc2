"""TensorRT backend on a real GPU against ONNX Runtime FP32 (runs only where TensorRT 10 and
pycuda import and a GPU is present; everything else about TensorRT is tested without a GPU in
test_engine_cache.py)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edged.config import DetectConfig, ModelConfig
from edged.vision.detector import Detector

pytestmark = [pytest.mark.tensorrt, pytest.mark.gpu]


@pytest.fixture(scope="module")
def trt() -> object:
    pytest.importorskip("pycuda.driver", reason="pycuda is not installed here")
    return pytest.importorskip("tensorrt", reason="TensorRT is not installed here")


@pytest.mark.parametrize("precision, tolerance", [("fp32", 0.01), ("fp16", 0.03)])
def test_detections_match_onnxruntime(
    trt: object, tmp_path: Path, default_model: Path, sample_photos: list[Path],
    precision: str, tolerance: float
) -> None:
    model = ModelConfig(path=default_model, backend="tensorrt", input_size=416,
                        trt_precision=precision, cache_dir=tmp_path)  # type: ignore[arg-type]
    detect = DetectConfig(conf=0.25)
    gpu, cpu = Detector(model, detect), Detector(model.model_copy(
        update={"backend": "onnxruntime"}), detect)
    for photo in sample_photos:
        image = cv2.imread(str(photo))
        got, want = gpu.detect(image), cpu.detect(image)
        firm = want.scores >= detect.conf + tolerance
        assert len(got) >= int(firm.sum())
        np.testing.assert_allclose(np.sort(got.scores)[::-1][: int(firm.sum())],
                                   np.sort(want.scores[firm])[::-1], atol=tolerance)
    gpu.set_input_size(320)  # inside the engine's profile: no rebuild
    assert len(gpu.detect(cv2.imread(str(sample_photos[1])))) > 0
    assert len(list((tmp_path / "engines").glob("*.engine"))) == 1

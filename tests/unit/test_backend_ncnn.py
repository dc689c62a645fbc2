"""NCNN (pnnx conversion) against ONNX Runtime FP32 on real photos: every detection matched
with IoU >= 0.9 and score within 0.03 (issue 6, done-when 3)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edged.backends.ncnn import NcnnBackend
from edged.config import DetectConfig, ModelConfig
from edged.vision.detector import Detector
from edged.vision.nms import box_iou
from tests import artifacts

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def ncnn_model(tmp_path_factory: pytest.TempPathFactory, default_model: Path) -> Path:
    return artifacts.ncnn_model(tmp_path_factory, default_model)


@pytest.mark.parametrize("size", [416, 320])
def test_detections_match_onnxruntime(
    ncnn_model: Path, sample_photos: list[Path], size: int
) -> None:
    detect = DetectConfig(conf=0.25)
    ncnn = Detector(ModelConfig(path=ncnn_model, backend="ncnn", input_size=size), detect)
    ort = Detector(ModelConfig(path=ncnn_model, backend="onnxruntime", input_size=size), detect)
    assert ncnn.describe()["backend"] == "ncnn"
    compared = 0
    for photo in sample_photos:
        image = cv2.imread(str(photo))
        got, want = ncnn.detect(image), ort.detect(image)
        # Detections whose FP32 score sits right at the threshold may fall either side.
        firm = want.select(want.scores >= detect.conf + 0.03)
        for box, score, cls in zip(firm.boxes, firm.scores, firm.class_ids, strict=True):
            same = got.class_ids == cls
            assert same.any(), f"{photo.name}: class {cls} ({score:.2f}) missing in NCNN"
            ious = box_iou(box.astype(np.float64), got.boxes[same].astype(np.float64))
            best = int(ious.argmax())
            assert ious[best] >= 0.9, f"{photo.name}: IoU {ious[best]:.3f}"
            assert abs(got.scores[same][best] - score) <= 0.03, photo.name
            compared += 1
        assert len(got.select(got.scores >= detect.conf + 0.03)) <= len(want)
    assert compared >= 15


def test_raw_outputs_agree(ncnn_model: Path, sample_photos: list[Path]) -> None:
    from edged.backends.onnxruntime import OnnxRuntimeBackend
    from edged.vision.letterbox import Letterboxer

    config = ModelConfig(path=ncnn_model, input_size=416)
    ncnn, ort = NcnnBackend(config), OnnxRuntimeBackend(config)
    ncnn.load()
    ort.load()
    letterboxer = Letterboxer(416)
    letterboxer.letterbox(cv2.imread(str(sample_photos[1])))
    a, b = ncnn.infer(letterboxer.tensor), ort.infer(letterboxer.tensor)
    assert a.shape == b.shape == (1, 2535, 85)
    assert np.abs(a[..., 4:] - b[..., 4:]).max() < 0.03  # objectness and class scores
    assert np.abs(a[..., :4] - b[..., :4]).max() < 2.0  # box centre/size in input pixels


def test_size_switch_loads_the_other_twin_and_refuses_a_missing_one(ncnn_model: Path) -> None:
    backend = NcnnBackend(ModelConfig(path=ncnn_model, input_size=416, ncnn_threads=1))
    backend.load()
    assert backend.input_spec.dynamic  # two twins: the governor may switch between them
    assert backend.describe()["threads"] == 1
    backend.set_input_size(320)
    assert backend.infer(np.zeros((1, 3, 320, 320), np.float32)).shape == (1, 1500, 85)
    assert backend.describe()["param"].endswith(".320.ncnn.param")
    with pytest.raises(ValueError, match=r"no NCNN twin .* at 640"):
        backend.set_input_size(640)
    with pytest.raises(ValueError, match=r"\[1, 3, 320, 320\]"):
        backend.infer(np.zeros((1, 3, 416, 416), np.float32))


def test_metadata_comes_from_the_onnx_file(ncnn_model: Path) -> None:
    backend = NcnnBackend(ModelConfig(path=ncnn_model))
    backend.load()
    assert backend.input_spec.size == 416  # the model's imgsz metadata
    assert backend.metadata["layout"] == "yolov5"
    assert "person" in backend.metadata["names"]

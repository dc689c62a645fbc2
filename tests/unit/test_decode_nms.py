"""Decoding both YOLO output layouts on hand-built arrays, and class-aware NMS."""

from __future__ import annotations

import numpy as np
import pytest

from edged.vision.decode import decode, num_classes, resolve_layout
from edged.vision.detections import Detections
from edged.vision.detector import filter_detections, unknown_classes
from edged.vision.nms import box_iou, nms


def v5_output(rows: list[list[float]], nc: int, n_total: int = 300) -> np.ndarray:
    """(1, n_total, 5 + nc): the given rows then background rows with zero objectness."""
    out = np.zeros((1, n_total, 5 + nc), np.float32)
    out[0, :, :4] = [10, 10, 4, 4]
    out[0, :, 5:] = 0.9  # high class scores must not matter when objectness is 0
    for i, row in enumerate(rows):
        out[0, i] = row
    return out


def v8_output(cols: list[list[float]], nc: int, n_total: int = 200) -> np.ndarray:
    out = np.zeros((1, 4 + nc, n_total), np.float32)
    out[0, :4] = np.array([[10], [10], [4], [4]])
    for i, col in enumerate(cols):
        out[0, :, i] = col
    return out


def test_v5_score_is_objectness_times_class() -> None:
    out = v5_output(
        [
            [100, 50, 20, 10, 0.9, 0.1, 0.8, 0.2],  # class 1, 0.72
            [30, 40, 10, 20, 0.5, 0.7, 0.1, 0.1],  # class 0, 0.35
            [30, 40, 10, 20, 0.9, 0.3, 0.2, 0.1],  # 0.27 < conf
            [30, 40, 10, 20, 0.2, 1.0, 0.0, 0.0],  # objectness below conf
        ],
        nc=3,
    )
    cand = decode(out, conf=0.3, layout="yolov5")
    assert cand.scores.dtype == np.float32 and cand.class_ids.dtype == np.int32
    assert cand.boxes.dtype == np.float32
    np.testing.assert_allclose(cand.scores, [0.72, 0.35], rtol=1e-6)
    assert cand.class_ids.tolist() == [1, 0]
    np.testing.assert_allclose(cand.boxes, [[90, 45, 110, 55], [25, 30, 35, 50]])


def test_v8_score_is_best_class_and_transposed() -> None:
    out = v8_output(
        [
            [100, 50, 20, 10, 0.1, 0.6],  # class 1, 0.6
            [30, 40, 10, 20, 0.45, 0.2],  # class 0, 0.45
            [30, 40, 10, 20, 0.25, 0.25],  # below conf
        ],
        nc=2,
    )
    cand = decode(out, conf=0.3, layout="yolov8")
    np.testing.assert_allclose(cand.scores, [0.6, 0.45], rtol=1e-6)
    assert cand.class_ids.tolist() == [1, 0]
    np.testing.assert_allclose(cand.boxes, [[90, 45, 110, 55], [25, 30, 35, 50]])


def test_threshold_is_strict() -> None:
    out = v8_output([[10, 10, 4, 4, 0.5, 0.0]], nc=2)
    assert len(decode(out, conf=0.5, layout="yolov8")) == 0
    assert len(decode(out, conf=0.49, layout="yolov8")) == 1


def test_nothing_above_threshold_gives_empty_arrays() -> None:
    cand = decode(v5_output([], nc=80), conf=0.25)
    assert cand.boxes.shape == (0, 4) and cand.scores.shape == (0,) and len(cand) == 0


def test_layout_from_shape_and_metadata() -> None:
    assert resolve_layout((1, 84, 8400)) == "yolov8"
    assert resolve_layout((1, 2535, 85)) == "yolov5"
    assert resolve_layout((1, 6, 8400), "yolov8") == "yolov8"
    assert resolve_layout((1, 85, 2535), "yolov5") == "yolov5"  # metadata wins over shape
    assert resolve_layout((1, 6, 8400), "YOLO11") == "yolov8"
    with pytest.raises(ValueError, match="unknown output layout"):
        resolve_layout((1, 6, 8400), "detr")
    assert num_classes((1, 84, 8400), "yolov8") == 80
    assert num_classes((1, 2535, 85), "yolov5") == 80
    with pytest.raises(ValueError, match="shape"):
        resolve_layout((2, 84, 8400))


def test_decode_guesses_layout_when_not_given() -> None:
    out = v8_output([[100, 50, 20, 10, 0.1, 0.6]], nc=2)
    assert decode(out, conf=0.3).class_ids.tolist() == [1]


def test_box_iou() -> None:
    boxes = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 10, 10]], float)
    np.testing.assert_allclose(box_iou(boxes[0], boxes), [1.0, 50 / 150, 0.0, 1.0])


def test_nms_is_class_aware() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [1, 1, 10, 10]], np.float32)
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    # Same class: the two lower boxes overlap the best one heavily and go.
    assert nms(boxes, scores, np.array([0, 0, 0]), 0.5, 100).tolist() == [0]
    # Different classes never suppress each other.
    assert nms(boxes, scores, np.array([0, 1, 2]), 0.5, 100).tolist() == [0, 1, 2]
    # Class 0 twice, class 1 once.
    assert nms(boxes, scores, np.array([0, 1, 0]), 0.5, 100).tolist() == [0, 1]


def test_nms_keeps_low_overlap_and_orders_by_score() -> None:
    boxes = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [100, 100, 110, 110]], np.float32)
    scores = np.array([0.5, 0.9, 0.7], np.float32)
    # IoU of the first two is 1/3: kept at 0.45, suppressed at 0.3.
    assert nms(boxes, scores, np.zeros(3, int), 0.45, 100).tolist() == [1, 2, 0]
    assert nms(boxes, scores, np.zeros(3, int), 0.3, 100).tolist() == [1, 2]


def test_nms_max_det() -> None:
    boxes = np.array([[i * 20, 0, i * 20 + 10, 10] for i in range(10)], np.float32)
    scores = np.linspace(0.9, 0.5, 10).astype(np.float32)
    kept = nms(boxes, scores, np.zeros(10, int), 0.5, max_det=3)
    assert kept.tolist() == [0, 1, 2]


def test_nms_empty() -> None:
    kept = nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, int), 0.5, 10)
    assert kept.shape == (0,)


def test_nms_agrees_with_opencv_on_random_boxes() -> None:
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(7)
    xy = rng.uniform(0, 300, (400, 2))
    wh = rng.uniform(10, 80, (400, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    scores = rng.uniform(0.3, 1.0, 400).astype(np.float32)
    classes = rng.integers(0, 3, 400).astype(np.int32)
    ours = nms(boxes, scores, classes, 0.45, 1000)
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    theirs = cv2.dnn.NMSBoxesBatched(xywh.astype(np.float64), scores, classes, 0.0, 0.45)
    assert sorted(ours.tolist()) == sorted(np.asarray(theirs).reshape(-1).tolist())


# --- per-source filtering after NMS ----------------------------------------------------------

NAMES = ["person", "bicycle", "car"]


def three_detections() -> Detections:
    return Detections(
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.array([0.9, 0.4, 0.6], np.float32),
        np.array([0, 2, 1], np.int32),
    )


def test_filter_by_classes_and_min_score() -> None:
    dets = three_detections()
    assert filter_detections(dets, NAMES, None, 0.0) is dets
    assert filter_detections(dets, NAMES, ["car", "person"], 0.0).class_ids.tolist() == [0, 2]
    assert filter_detections(dets, NAMES, None, 0.5).scores.tolist() == pytest.approx([0.9, 0.6])
    kept = filter_detections(dets, NAMES, ["car", "bicycle"], 0.5)
    assert kept.class_ids.tolist() == [1] and kept.boxes.tolist() == [[8, 9, 10, 11]]
    assert len(filter_detections(dets, NAMES, [], 0.0)) == 0
    assert len(filter_detections(Detections.empty(), NAMES, ["car"], 0.3)) == 0


def test_unknown_classes() -> None:
    assert unknown_classes(None, NAMES) == []
    assert unknown_classes(["car", "persn", "truck"], NAMES) == ["persn", "truck"]

"""edged's detections agree box-for-box with an independent OpenCV reference.

The reference side imports nothing from edged's preprocessing, decode or NMS: it letterboxes
with its own code (same documented geometry), runs the network with cv2.dnn (darknet cfg +
weights for YOLOv3-tiny, the ONNX file for YOLOv8), decodes here and suppresses with
cv2.dnn.NMSBoxesBatched. Only `Detector.detect` is exercised on the edged side.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

from edged.config import DetectConfig, ModelConfig
from edged.vision.detector import Detector

IOU = 0.45
DARKNET_CONF = 0.25
# The fall model is a person detector; 0.25 leaves 1-3 people on every photo but horses.jpg.
YOLOV8_CONF = 0.25
MAX_DET = 300  # above any real count, so max_det never cuts where OpenCV would not
VIDEO_STEP = 20  # every 20th of vtest.avi's 795 frames: 40 frames
# The fall model is ~5x the compute of YOLOv3-tiny and cv2.dnn runs it in ~1 s per frame on a
# small CPU; every 35th frame still gives 23 frames spread over the whole clip.
YOLOV8_VIDEO_STEP = 35

MIN_PAIR_IOU = 0.99
MAX_SCORE_DIFF = 1e-3
NEAR_THRESHOLD = 0.02

pytestmark = pytest.mark.slow


@dataclass
class Found:
    boxes: np.ndarray  # (n, 4) xyxy, source pixels
    scores: np.ndarray
    class_ids: np.ndarray


# --- reference side: written from the geometry in the docs, not from edged's code ---------


def ref_letterbox(frame: np.ndarray, size: int) -> tuple[np.ndarray, float, int, int]:
    h, w = frame.shape[:2]
    r = min(size / h, size / w)
    nw, nh = round(w * r), round(h * r)
    resized = cv2.resize(frame, (nw, nh), interpolation=cv2.INTER_LINEAR)
    left, top = (size - nw) // 2, (size - nh) // 2
    padded = np.pad(
        resized,
        ((top, size - nh - top), (left, size - nw - left), (0, 0)),
        mode="constant",
        constant_values=114,
    )
    rgb = np.ascontiguousarray(padded[:, :, ::-1])
    blob = rgb.transpose(2, 0, 1)[np.newaxis].astype(np.float32) / np.float32(255)
    return blob, r, left, top


def ref_finish(
    cx_cy_w_h: np.ndarray,
    scores: np.ndarray,
    class_ids: np.ndarray,
    conf: float,
    r: float,
    left: int,
    top: int,
    frame_shape: tuple[int, ...],
) -> Found:
    """Threshold, OpenCV batched NMS in input pixels, then back to source pixels."""
    keep = scores > conf
    cx_cy_w_h, scores, class_ids = cx_cy_w_h[keep], scores[keep], class_ids[keep]
    xywh = np.column_stack([cx_cy_w_h[:, :2] - cx_cy_w_h[:, 2:] / 2, cx_cy_w_h[:, 2:]])
    idx = cv2.dnn.NMSBoxesBatched(
        xywh.astype(np.float64), scores.astype(np.float32), class_ids.astype(np.int32),
        conf, IOU,
    )
    idx = np.asarray(idx, int).reshape(-1)
    sel = xywh[idx]
    x1 = (sel[:, 0] - left) / r
    y1 = (sel[:, 1] - top) / r
    x2 = (sel[:, 0] + sel[:, 2] - left) / r
    y2 = (sel[:, 1] + sel[:, 3] - top) / r
    h, w = frame_shape[:2]
    boxes = np.column_stack([x1.clip(0, w), y1.clip(0, h), x2.clip(0, w), y2.clip(0, h)])
    return Found(boxes, scores[idx], class_ids[idx])


class DarknetReference:
    """cv2.dnn on the original cfg + weights: rows of [cx, cy, w, h] (normalised to the
    input), objectness, then class probabilities already multiplied by objectness."""

    def __init__(self, cfg: Path, weights: Path, size: int, conf: float) -> None:
        self.net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
        self.outputs = self.net.getUnconnectedOutLayersNames()
        self.size, self.conf = size, conf

    def __call__(self, frame: np.ndarray) -> Found:
        blob, r, left, top = ref_letterbox(frame, self.size)
        self.net.setInput(blob)
        rows = np.concatenate([o.reshape(-1, o.shape[-1]) for o in self.net.forward(self.outputs)])
        class_probs = rows[:, 5:]
        class_ids = class_probs.argmax(axis=1)
        scores = class_probs[np.arange(len(rows)), class_ids]
        return ref_finish(
            rows[:, :4] * self.size, scores, class_ids, self.conf, r, left, top, frame.shape
        )


class OnnxV8Reference:
    """cv2.dnn on the Ultralytics export: (1, 4 + nc, N), boxes in input pixels."""

    def __init__(self, model: Path, size: int, conf: float) -> None:
        self.net = cv2.dnn.readNetFromONNX(str(model))
        self.size, self.conf = size, conf

    def __call__(self, frame: np.ndarray) -> Found:
        blob, r, left, top = ref_letterbox(frame, self.size)
        self.net.setInput(blob)
        pred = self.net.forward()[0].T  # (N, 4 + nc)
        class_ids = pred[:, 4:].argmax(axis=1)
        scores = pred[np.arange(len(pred)), 4 + class_ids]
        return ref_finish(pred[:, :4], scores, class_ids, self.conf, r, left, top, frame.shape)


# --- comparison ----------------------------------------------------------------------------


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    tl = np.maximum(a[:, None, :2], b[None, :, :2])
    br = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(br - tl, 0, None).prod(axis=2)
    area_a = (a[:, 2:] - a[:, :2]).prod(axis=1)
    area_b = (b[:, 2:] - b[:, :2]).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


@dataclass
class Agreement:
    pairs: int = 0
    min_iou: float = 1.0
    max_score_diff: float = 0.0
    unmatched: int = 0
    max_unmatched_gap: float = 0.0  # largest |score - conf| among unmatched detections
    problems: list[str] | None = None

    def compare(self, label: str, ref: Found, ours: Found, conf: float) -> None:
        problems = self.problems if self.problems is not None else []
        self.problems = problems
        ious = iou_matrix(ref.boxes, ours.boxes) if len(ref.scores) and len(ours.scores) else None
        used_r: set[int] = set()
        used_o: set[int] = set()
        if ious is not None:
            ious = np.where(ref.class_ids[:, None] == ours.class_ids[None, :], ious, 0.0)
            for flat in np.argsort(-ious, axis=None, kind="stable"):
                i, j = divmod(int(flat), ious.shape[1])
                if ious[i, j] <= 0.5:
                    break
                if i in used_r or j in used_o:
                    continue
                used_r.add(i)
                used_o.add(j)
                diff = abs(float(ref.scores[i]) - float(ours.scores[j]))
                self.pairs += 1
                self.min_iou = min(self.min_iou, float(ious[i, j]))
                self.max_score_diff = max(self.max_score_diff, diff)
                if ious[i, j] < MIN_PAIR_IOU or diff > MAX_SCORE_DIFF:
                    problems.append(
                        f"{label}: pair class {int(ref.class_ids[i])} IoU {ious[i, j]:.4f} "
                        f"score diff {diff:.2e} (ref {ref.boxes[i]}, ours {ours.boxes[j]})"
                    )
        for side, found, used in (("reference", ref, used_r), ("edged", ours, used_o)):
            for k in range(len(found.scores)):
                if k in used:
                    continue
                gap = abs(float(found.scores[k]) - conf)
                self.unmatched += 1
                self.max_unmatched_gap = max(self.max_unmatched_gap, gap)
                if gap > NEAR_THRESHOLD:
                    problems.append(
                        f"{label}: only {side} found class {int(found.class_ids[k])} score "
                        f"{float(found.scores[k]):.3f} at {found.boxes[k]}"
                    )

    def summary(self, name: str) -> str:
        return (
            f"{name}: {self.pairs} matched pairs, min IoU {self.min_iou:.5f}, max |score diff| "
            f"{self.max_score_diff:.2e}, {self.unmatched} unmatched "
            f"(max |score - conf| {self.max_unmatched_gap:.3f})"
        )


def edged_found(detector: Detector, frame: np.ndarray) -> Found:
    dets = detector.detect(frame)
    return Found(dets.boxes.astype(np.float64), dets.scores, dets.class_ids)


def video_frames(path: Path, step: int) -> Iterator[tuple[str, np.ndarray]]:
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), f"cannot open {path}"
    index = 0
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                return
            if index % step == 0:
                yield f"{path.name}#{index}", frame
            index += 1
    finally:
        cap.release()


def check(
    name: str,
    detector: Detector,
    reference: Callable[[np.ndarray], Found],
    frames: Iterator[tuple[str, np.ndarray]],
    conf: float,
    min_frames: int,
) -> Agreement:
    agreement = Agreement()
    count = 0
    for label, frame in frames:
        agreement.compare(label, reference(frame), edged_found(detector, frame), conf)
        count += 1
    print(f"\n{agreement.summary(name)} over {count} frames")
    assert count >= min_frames
    assert agreement.pairs > 0, "no detections at all: the comparison proves nothing"
    assert not agreement.problems, "\n".join(agreement.problems[:20])
    return agreement


def photos(paths: list[Path]) -> Iterator[tuple[str, np.ndarray]]:
    for path in paths:
        frame = cv2.imread(str(path))
        assert frame is not None, f"cannot read {path}"
        yield path.name, frame


# --- fixtures and tests --------------------------------------------------------------------


@pytest.fixture(scope="module")
def darknet_detector(default_model: Path) -> Detector:
    return Detector(
        ModelConfig(path=default_model, intra_op_threads=1, inter_op_threads=1),
        DetectConfig(conf=DARKNET_CONF, iou=IOU, max_det=MAX_DET),
    )


@pytest.fixture(scope="module")
def darknet_reference(
    darknet_files: tuple[Path, Path, Path], darknet_detector: Detector
) -> DarknetReference:
    cfg, weights, _ = darknet_files
    cv2.setNumThreads(1)
    return DarknetReference(cfg, weights, darknet_detector.input_size, DARKNET_CONF)


@pytest.fixture(scope="module")
def yolov8_detector(yolov8_model: Path) -> Detector:
    return Detector(
        ModelConfig(path=yolov8_model, intra_op_threads=1, inter_op_threads=1),
        DetectConfig(conf=YOLOV8_CONF, iou=IOU, max_det=MAX_DET),
    )


@pytest.fixture(scope="module")
def yolov8_reference(yolov8_model: Path, yolov8_detector: Detector) -> OnnxV8Reference:
    cv2.setNumThreads(1)
    return OnnxV8Reference(yolov8_model, yolov8_detector.input_size, YOLOV8_CONF)


def test_darknet_photos(
    darknet_detector: Detector, darknet_reference: DarknetReference, sample_photos: list[Path]
) -> None:
    check("yolov3-tiny photos", darknet_detector, darknet_reference, photos(sample_photos),
          DARKNET_CONF, len(sample_photos))


def test_darknet_video(
    darknet_detector: Detector, darknet_reference: DarknetReference, sample_video: Path
) -> None:
    check("yolov3-tiny vtest.avi", darknet_detector, darknet_reference,
          video_frames(sample_video, VIDEO_STEP), DARKNET_CONF, 20)


def test_darknet_after_switching_to_320(
    default_model: Path, darknet_files: tuple[Path, Path, Path], sample_photos: list[Path]
) -> None:
    """The thermal governor's path: a dynamic model switched to a smaller input at run time."""
    detector = Detector(
        ModelConfig(path=default_model, intra_op_threads=1, inter_op_threads=1),
        DetectConfig(conf=DARKNET_CONF, iou=IOU, max_det=MAX_DET),
    )
    detector.set_input_size(320)
    cfg, weights, _ = darknet_files
    reference = DarknetReference(cfg, weights, 320, DARKNET_CONF)
    check("yolov3-tiny photos at 320", detector, reference, photos(sample_photos),
          DARKNET_CONF, len(sample_photos))


def test_darknet_names_from_metadata(darknet_detector: Detector) -> None:
    assert len(darknet_detector.names) == 80
    assert darknet_detector.names[:3] == ["person", "bicycle", "car"]


def test_yolov8_photos(
    yolov8_detector: Detector, yolov8_reference: OnnxV8Reference, sample_photos: list[Path]
) -> None:
    check("yolov8 photos", yolov8_detector, yolov8_reference, photos(sample_photos),
          YOLOV8_CONF, len(sample_photos))


def test_yolov8_video(
    yolov8_detector: Detector, yolov8_reference: OnnxV8Reference, sample_video: Path
) -> None:
    check("yolov8 vtest.avi", yolov8_detector, yolov8_reference,
          video_frames(sample_video, YOLOV8_VIDEO_STEP), YOLOV8_CONF, 20)


def test_yolov8_layout_and_names(yolov8_detector: Detector) -> None:
    assert yolov8_detector.layout == "yolov8"
    assert yolov8_detector.names == ["Normal", "Fall"]
    assert yolov8_detector.input_size == 640

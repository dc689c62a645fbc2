"""Raw YOLO output -> candidate boxes (input pixels), scores and class ids above a threshold.

Two layouts exist in the wild:

- ``yolov5`` (YOLOv5 exports, our darknet import): (1, N, 5 + nc) rows of
  [cx, cy, w, h, objectness, nc class scores]; score = objectness x best class score.
- ``yolov8`` (YOLOv8 / YOLO11 exports): (1, 4 + nc, N) columns of [cx, cy, w, h, nc class
  scores]; there is no objectness, score = best class score.

Boxes are in input-tensor pixels. A candidate is kept when its score is strictly above
`conf`, as Ultralytics and OpenCV do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

Layout = Literal["yolov5", "yolov8"]

# Metadata spellings seen in exports and our own importer, mapped to the two layouts.
_LAYOUT_ALIASES: dict[str, Layout] = {
    "yolov5": "yolov5",
    "v5": "yolov5",
    "yolov3": "yolov5",
    "darknet": "yolov5",
    "yolov8": "yolov8",
    "v8": "yolov8",
    "yolo11": "yolov8",
    "yolov11": "yolov8",
}


@dataclass(frozen=True)
class Candidates:
    """Pre-NMS candidates: boxes (n, 4) float32 xyxy, scores (n,) float32, class_ids (n,) int32."""

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)


def resolve_layout(output_shape: tuple[int, ...], metadata_layout: str | None = None) -> Layout:
    """The layout named by metadata when present, else guessed from the output shape.

    The guess relies on a detector having more anchors than channels (8400 vs 84 for
    YOLOv8n at 640, 2535 vs 85 for YOLOv3-tiny at 416), which holds for every real model.
    """
    if metadata_layout:
        key = metadata_layout.strip().lower()
        if key not in _LAYOUT_ALIASES:
            known = ", ".join(sorted(set(_LAYOUT_ALIASES.values())))
            raise ValueError(f"unknown output layout {metadata_layout!r}; expected one of {known}")
        return _LAYOUT_ALIASES[key]
    rows, cols = _matrix_shape(output_shape)
    return "yolov8" if rows < cols else "yolov5"


def num_classes(output_shape: tuple[int, ...], layout: Layout) -> int:
    rows, cols = _matrix_shape(output_shape)
    return rows - 4 if layout == "yolov8" else cols - 5


def decode(output: np.ndarray, conf: float, layout: Layout | None = None) -> Candidates:
    """Decode one image's raw output; `layout` None guesses it from the shape."""
    layout = layout or resolve_layout(output.shape)
    pred = output.reshape(_matrix_shape(output.shape))
    if layout == "yolov8":
        return _decode_v8(pred, conf)
    return _decode_v5(pred, conf)


def _decode_v5(pred: np.ndarray, conf: float) -> Candidates:
    if pred.shape[1] < 6:
        raise ValueError(f"yolov5 layout needs rows of 5 + classes values, got {pred.shape}")
    # Class scores are sigmoids (<= 1), so objectness <= conf rules a row out before the
    # product is computed: this drops ~99% of rows cheaply.
    rows = pred[pred[:, 4] > conf]
    class_scores = rows[:, 5:]
    class_ids = class_scores.argmax(axis=1)
    scores = rows[:, 4] * np.take_along_axis(class_scores, class_ids[:, None], axis=1)[:, 0]
    keep = scores > conf
    return Candidates(
        _xywh_to_xyxy(rows[keep, :4]),
        scores[keep].astype(np.float32, copy=False),
        class_ids[keep].astype(np.int32),
    )


def _decode_v8(pred: np.ndarray, conf: float) -> Candidates:
    if pred.shape[0] < 5:
        raise ValueError(f"yolov8 layout needs 4 + classes channels, got {pred.shape}")
    class_scores = pred[4:]
    best = class_scores.max(axis=0)
    keep = best > conf
    # Transposing only the survivors avoids touching the whole (4 + nc, N) block twice.
    return Candidates(
        _xywh_to_xyxy(pred[:4, keep].T),
        best[keep].astype(np.float32, copy=False),
        class_scores[:, keep].argmax(axis=0).astype(np.int32),
    )


def _xywh_to_xyxy(xywh: np.ndarray) -> np.ndarray:
    xy = xywh[:, :2]
    half = xywh[:, 2:4] / 2
    return np.concatenate([xy - half, xy + half], axis=1).astype(np.float32, copy=False)


def _matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) == 3 and shape[0] == 1:
        return int(shape[1]), int(shape[2])
    if len(shape) == 2:
        return int(shape[0]), int(shape[1])
    raise ValueError(f"expected a YOLO output of shape (1, a, b), got {tuple(shape)}")

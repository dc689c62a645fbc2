"""Class-aware greedy non-maximum suppression in numpy.

We keep our own instead of calling cv2.dnn.NMSBoxesBatched: the reference-agreement tests
use OpenCV's implementation as the independent reference, and a backend that runs without
OpenCV's dnn module (an NCNN or TensorRT board image) still needs NMS.
"""

from __future__ import annotations

import numpy as np

# Beyond this many candidates the frame is noise (or conf is far too low); NMS is O(n^2), so
# only the best ones are considered, as Ultralytics does.
MAX_CANDIDATES = 30_000


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box with each of (n, 4) xyxy boxes (areas as w * h, no +1)."""
    inter_w = np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0])
    inter_h = np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1])
    inter = np.clip(inter_w, 0, None) * np.clip(inter_h, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    class_ids: np.ndarray,
    iou_threshold: float,
    max_det: int,
) -> np.ndarray:
    """Indices of the kept boxes, best score first.

    Greedy: take the best remaining box, drop every remaining box of the same class whose IoU
    with it is strictly above `iou_threshold`, repeat until none remain or `max_det` are kept.
    Boxes of different classes never suppress each other.
    """
    if len(scores) == 0 or max_det <= 0:
        return np.zeros(0, np.intp)
    # Stable sort so equal scores keep decode order: results do not depend on sort internals.
    order = np.argsort(-scores, kind="stable")[:MAX_CANDIDATES]
    # float64 for the IoU arithmetic: float32 areas of large boxes lose the last decimals
    # that decide borderline suppressions.
    boxes64 = boxes[order].astype(np.float64)
    classes = class_ids[order]
    keep: list[int] = []
    alive = np.arange(len(order))
    while alive.size and len(keep) < max_det:
        best = alive[0]
        keep.append(int(order[best]))
        rest = alive[1:]
        same = classes[rest] == classes[best]
        overlap = np.zeros(rest.size, bool)
        if same.any():
            overlap[same] = box_iou(boxes64[best], boxes64[rest[same]]) > iou_threshold
        alive = rest[~overlap]
    return np.asarray(keep, np.intp)

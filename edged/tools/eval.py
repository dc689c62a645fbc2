"""`edged eval`: accuracy of one model variant against a reference, shared by every variant.

There is no ground truth for the sample media, so the reference model's detections (FP32
ONNX Runtime, conf >= `label_conf`, after NMS) are the pseudo-labels; every report says so.
Metrics:

- mAP50 and mAP50-95 from pycocotools' COCOeval (the candidate runs at conf 0.001 so the
  whole precision-recall curve exists, as Ultralytics' val does);
- precision and recall at the operating threshold `conf`: candidate detections >= conf are
  matched greedily (best score first) to same-class reference detections >= conf at
  IoU >= 0.5;
- per-class counts: labels, detections, true positives.

Frames come from a folder of images or are sampled from a video (`start:stop:every`), so a
calibration set and an evaluation set can be kept disjoint by frame index.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import structlog

from edged.config import DetectConfig, ModelConfig
from edged.vision.detections import Detections
from edged.vision.detector import Detector
from edged.vision.nms import box_iou

log = structlog.get_logger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
MAP_CONF = 0.001  # candidate threshold for mAP: the full PR curve, as COCO evaluation wants
MATCH_IOU = 0.5


@dataclass(frozen=True)
class Frames:
    """Frames to run, each with a stable id (file name or `video#index`)."""

    ids: list[str]
    images: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.ids)


def video_frames(path: Path, start: int = 0, stop: int | None = None, every: int = 1,
                 limit: int | None = None) -> Frames:
    """Frames start, start+every, ... (< stop) of a video, at most `limit` of them."""
    if every < 1 or start < 0:
        raise ValueError("need every >= 1 and start >= 0")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise OSError(f"{path}: cannot open video")
    ids, images = [], []
    index = 0
    try:
        while (stop is None or index < stop) and (limit is None or len(ids) < limit):
            wanted = index >= start and (index - start) % every == 0
            # grab() skips the colour conversion of frames nobody uses.
            ok = cap.grab()
            if not ok:
                break
            if wanted:
                ok, frame = cap.retrieve()
                if ok:
                    ids.append(f"{path.name}#{index}")
                    images.append(frame)
            index += 1
    finally:
        cap.release()
    if not ids:
        raise OSError(f"{path}: no frames in [{start}, {stop}) every {every}")
    return Frames(ids, images)


def image_frames(folder: Path, limit: int | None = None) -> Frames:
    """Every readable image in `folder` (sorted by name), at most `limit`."""
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    ids, images = [], []
    for path in paths[:limit]:
        image = cv2.imread(str(path))
        if image is not None:
            ids.append(path.name)
            images.append(image)
    if not ids:
        raise OSError(f"{folder}: no readable images ({', '.join(IMAGE_SUFFIXES)})")
    return Frames(ids, images)


def parse_range(text: str | None) -> tuple[int, int | None, int]:
    """`start:stop:every` (each part optional) -> (start, stop, every)."""
    parts = [*(text or "").split(":"), "", "", ""]
    start = int(parts[0]) if parts[0] else 0
    stop = int(parts[1]) if parts[1] else None
    every = int(parts[2]) if parts[2] else 1
    return start, stop, every


def run_detector(model: ModelConfig, frames: Frames, conf: float) -> list[Detections]:
    detector = Detector(model, DetectConfig(conf=conf, max_det=100))
    return [detector.detect(image) for image in frames.images]


def evaluate(
    candidate: ModelConfig, reference: ModelConfig, frames: Frames, *, conf: float = 0.25,
    label_conf: float = 0.25, names: Sequence[str] | None = None,
    reference_dets: list[Detections] | None = None,
) -> dict[str, Any]:
    """Score `candidate` against `reference`'s detections on `frames` (see module doc).

    `reference_dets` (from `run_detector(reference, frames, label_conf)`) skips re-running
    the reference when several variants are compared on the same frames (its conf must be
    <= both thresholds).
    """
    if reference_dets is None:
        reference_dets = run_detector(reference, frames, min(conf, label_conf))
    found = run_detector(candidate, frames, MAP_CONF)
    return score(reference_dets, found, conf=conf, label_conf=label_conf, names=names) | {
        "candidate": str(candidate.path),
        "candidate_backend": candidate.backend,
        "reference": str(reference.path),
        "pseudo_labels": f"reference detections after NMS at conf >= {label_conf} for mAP, "
                         f">= {conf} for precision/recall (no ground truth)",
        "frames": len(frames),
        "frame_ids": frames.ids,
    }


def score(reference: list[Detections], found: list[Detections], *, conf: float,
          label_conf: float = 0.25, names: Sequence[str] | None = None) -> dict[str, Any]:
    """mAP50 / mAP50-95 of `found` against `reference` >= `label_conf`; precision, recall and
    per-class counts with both sides cut at the operating threshold `conf`."""
    if len(reference) != len(found):
        raise ValueError("reference and detections must cover the same frames")
    map50_95, map50 = coco_map([d.select(d.scores >= label_conf) for d in reference], found)
    tp = fp = fn = 0
    per_class: dict[int, list[int]] = {}
    for ref, dets in zip(reference, found, strict=True):
        # The same cut on both sides: a label the reference itself would not report at the
        # operating threshold is no miss of the candidate.
        truth = ref.select(ref.scores >= conf)
        kept = dets.select(dets.scores >= conf)
        hits = match(truth, kept, MATCH_IOU)
        tp, fp, fn = tp + hits, fp + len(kept) - hits, fn + len(truth) - hits
        for cls in set(truth.class_ids.tolist()) | set(kept.class_ids.tolist()):
            row = per_class.setdefault(int(cls), [0, 0, 0])
            t_mask, d_mask = truth.class_ids == cls, kept.class_ids == cls
            row[0] += int(t_mask.sum())
            row[1] += int(d_mask.sum())
            row[2] += match(truth.select(t_mask), kept.select(d_mask), MATCH_IOU)
    classes = {
        (names[c] if names and c < len(names) else str(c)): {
            "labels": r[0], "detections": r[1], "true_positives": r[2]}
        for c, r in sorted(per_class.items())
    }
    return {
        "map50": round(map50, 4),
        "map50_95": round(map50_95, 4),
        "conf": conf,
        "iou": MATCH_IOU,
        "precision": round(tp / (tp + fp), 4) if tp + fp else 1.0,
        "recall": round(tp / (tp + fn), 4) if tp + fn else 1.0,
        "true_positives": tp,
        "false_positives": fp,
        "false_negatives": fn,
        "per_class": classes,
    }


def match(truth: Detections, dets: Detections, iou: float) -> int:
    """True positives: each detection (best score first) takes the best unmatched same-class
    label with IoU >= `iou`, as COCO matching does."""
    if not len(truth) or not len(dets):
        return 0
    free = np.ones(len(truth), bool)
    hits = 0
    for i in np.argsort(-dets.scores, kind="stable"):
        same = free & (truth.class_ids == dets.class_ids[i])
        if not same.any():
            continue
        overlaps = np.where(same, box_iou(dets.boxes[i].astype(np.float64),
                                          truth.boxes.astype(np.float64)), -1.0)
        best = int(overlaps.argmax())
        if overlaps[best] >= iou:
            free[best] = False
            hits += 1
    return hits


def coco_map(labels: list[Detections], found: list[Detections]) -> tuple[float, float]:
    """(mAP50-95, mAP50) from pycocotools; (1, 1) when there are no labels and no boxes."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, annotations, results = [], [], []
    classes: set[int] = set()
    for image_id, (truth, dets) in enumerate(zip(labels, found, strict=True), start=1):
        images.append({"id": image_id})
        for box, cls in zip(truth.boxes, truth.class_ids, strict=True):
            w, h = float(box[2] - box[0]), float(box[3] - box[1])
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": int(cls) + 1, "iscrowd": 0, "area": w * h,
                                "bbox": [float(box[0]), float(box[1]), w, h]})
            classes.add(int(cls))
        for box, s, cls in zip(dets.boxes, dets.scores, dets.class_ids, strict=True):
            results.append({"image_id": image_id, "category_id": int(cls) + 1,
                            "score": float(s), "bbox": [float(box[0]), float(box[1]),
                                                        float(box[2] - box[0]),
                                                        float(box[3] - box[1])]})
            classes.add(int(cls))
    if not annotations:
        return (1.0, 1.0) if not results else (0.0, 0.0)
    # COCOeval prints its progress and summary table to stdout; the CLI owns stdout.
    with contextlib.redirect_stdout(io.StringIO()):
        truth_db = COCO()
        truth_db.dataset = {"images": images, "annotations": annotations,
                            "categories": [{"id": c + 1} for c in sorted(classes)]}
        truth_db.createIndex()
        dets_db = truth_db.loadRes(results) if results else COCO()
        if not results:
            return 0.0, 0.0
        evaluator = COCOeval(truth_db, dets_db, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return max(0.0, float(evaluator.stats[0])), max(0.0, float(evaluator.stats[1]))


def format_eval(result: dict[str, Any]) -> str:
    lines = [
        f"candidate  {result['candidate']} ({result['candidate_backend']})",
        f"reference  {result['reference']}: {result['pseudo_labels']}",
        f"frames     {result['frames']}",
        f"mAP50 {result['map50']:.4f}   mAP50-95 {result['map50_95']:.4f}   at conf "
        f"{result['conf']}: precision {result['precision']:.4f}  recall {result['recall']:.4f}"
        f"  (tp {result['true_positives']}, fp {result['false_positives']}, "
        f"fn {result['false_negatives']})",
        f"{'class':<14} {'labels':>7} {'dets':>7} {'tp':>7}",
    ]
    for name, row in result["per_class"].items():
        lines.append(f"{name:<14} {row['labels']:>7} {row['detections']:>7} "
                     f"{row['true_positives']:>7}")
    return "\n".join(lines)

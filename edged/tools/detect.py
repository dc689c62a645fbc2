"""`edged detect`: one-shot detection on an image or a video, no daemon (to check a model)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from edged.config import Config, DetectConfig, ModelConfig
from edged.exitcodes import ExitCode
from edged.preflight import load_class_names
from edged.vision.detections import Detections
from edged.vision.detector import Detector

_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def model_settings(
    args: argparse.Namespace, config: Config | None
) -> tuple[ModelConfig, DetectConfig]:
    """Config file settings, overridden by --model / --threads / --conf."""
    if config is None:
        model = ModelConfig(path=Path(args.model))
        detect = DetectConfig()
    else:
        model, detect = config.model, config.detect
    updates: dict[str, object] = {}
    if getattr(args, "model", None):
        updates["path"] = Path(args.model)
    if getattr(args, "threads", None) is not None:
        updates["intra_op_threads"] = args.threads
    if updates:
        model = model.model_copy(update=updates)
    if getattr(args, "conf", None) is not None:
        detect = detect.model_copy(update={"conf": args.conf})
    return model, detect


def _frames(path: Path, max_frames: int) -> Iterator[tuple[int, np.ndarray]]:
    if path.suffix.lower() in _IMAGE_SUFFIXES:
        image = cv2.imread(str(path))
        if image is None:
            raise OSError(f"{path}: cannot read image (missing or not an image)")
        yield 0, image
        return
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise OSError(f"{path}: cannot open video (missing or unsupported format)")
    try:
        index = 0
        while not max_frames or index < max_frames:
            ok, frame = cap.read()
            if not ok:
                break
            yield index, frame
            index += 1
    finally:
        cap.release()


def _as_dicts(dets: Detections, names: list[str]) -> list[dict[str, object]]:
    return [
        {"label": names[int(c)] if int(c) < len(names) else str(int(c)),
         "class_id": int(c), "score": round(float(s), 4),
         "box": [round(float(v), 1) for v in box]}
        for box, s, c in zip(dets.boxes, dets.scores, dets.class_ids, strict=True)
    ]


def detect_command(args: argparse.Namespace, config: Config | None) -> int:
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # errors come as events
    model, detect = model_settings(args, config)
    names = load_class_names(model)
    detector = Detector(model, detect)
    source = Path(args.input)
    results = []
    try:
        for index, frame in _frames(source, args.max_frames):
            found = _as_dicts(detector.detect(frame), names)
            results.append({"frame": index, "detections": found})
            if not args.json:
                for det in found:
                    box = ",".join(f"{v:.0f}" for v in det["box"])  # type: ignore[attr-defined]
                    print(f"{source.name}[{index}] {det['label']} {det['score']:.2f} [{box}]")
    except OSError as exc:
        print(f"edged: {exc}", file=sys.stderr)
        return int(ExitCode.NOINPUT)
    if args.json:
        print(json.dumps({"input": str(source), "model": str(model.path),
                          "input_size": detector.input_size, "frames": results}, indent=1))
    elif not any(r["detections"] for r in results):
        print(f"{source.name}: no detections at conf {detect.conf}")
    return 0

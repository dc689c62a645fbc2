"""The detector: BGR frame -> letterbox -> backend -> decode -> NMS -> source-frame boxes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from edged.backends.base import Backend, ModelUnavailable
from edged.config import DetectConfig, ModelConfig
from edged.tools.model_info import read_class_names
from edged.vision.decode import Layout, decode, num_classes, resolve_layout
from edged.vision.detections import Detections
from edged.vision.letterbox import Letterboxer, unletterbox
from edged.vision.nms import nms

log = structlog.get_logger(__name__)


def create_backend(model: ModelConfig) -> Backend:
    """The backend `model.backend` names, or `auto`'s choice (not loaded yet).

    Raises ModelUnavailable when an explicitly named backend cannot run here (exit 69).
    """
    from edged.backends.select import create_backend as select_and_create

    return select_and_create(model)


class Detector:
    """One model ready to detect; not thread-safe (it reuses one input buffer)."""

    def __init__(
        self, model: ModelConfig, detect: DetectConfig, backend: Backend | None = None
    ) -> None:
        self.backend = backend or create_backend(model)
        self.backend.load()
        self._iou = detect.iou
        self._max_det = detect.max_det
        self._conf = detect.conf
        self._letterboxer = Letterboxer(self.backend.input_spec.size)
        metadata = self.backend.metadata
        # One inference on the gray canvas tells the output shape (hence layout and class
        # count, which a dynamic model cannot declare) and pays first-run costs up front.
        probe = self.backend.infer(self._letterboxer.tensor)
        self.layout: Layout = resolve_layout(probe.shape, metadata.get("layout"))
        self.num_classes = num_classes(probe.shape, self.layout)
        self.names: list[str] = _class_names(model, metadata, self.num_classes)
        log.info(
            "detector.ready",
            layout=self.layout,
            classes=self.num_classes,
            input_size=self.input_size,
            conf=self._conf,
            iou=self._iou,
        )

    @property
    def input_size(self) -> int:
        return self._letterboxer.size

    @property
    def conf(self) -> float:
        return self._conf

    def set_thresholds(self, conf: float, iou: float) -> None:
        """New score and NMS thresholds (reloads, thermal modes); max_det stays fixed."""
        self.set_conf(conf)
        if not 0 < iou <= 1:
            raise ValueError(f"iou must be in (0, 1], got {iou}")
        self._iou = float(iou)

    def set_conf(self, conf: float) -> None:
        """Change the score threshold (the thermal governor raises it under heat)."""
        if not 0 < conf <= 1:
            raise ValueError(f"conf must be in (0, 1], got {conf}")
        self._conf = float(conf)

    def set_input_size(self, size: int) -> None:
        """Switch resolution (dynamic models only); the input buffer is reallocated once."""
        self.backend.set_input_size(size)
        if size != self._letterboxer.size:
            self._letterboxer = Letterboxer(size)

    def detect(self, frame_bgr: np.ndarray) -> Detections:
        """Detections in `frame_bgr` (HxWx3 uint8 BGR), boxes in its pixels, best first."""
        info = self._letterboxer.letterbox(frame_bgr)
        output = self.backend.infer(self._letterboxer.tensor)
        cand = decode(output, self._conf, self.layout)
        if len(cand) == 0:
            return Detections.empty()
        keep = nms(cand.boxes, cand.scores, cand.class_ids, self._iou, self._max_det)
        return Detections(
            unletterbox(cand.boxes[keep], info, frame_bgr.shape),
            cand.scores[keep],
            cand.class_ids[keep],
        )

    def describe(self) -> dict[str, Any]:
        return {
            **self.backend.describe(),
            "layout": self.layout,
            "num_classes": self.num_classes,
            "conf": self._conf,
            "iou": self._iou,
            "max_det": self._max_det,
        }


def filter_detections(
    dets: Detections, names: Sequence[str], classes: Sequence[str] | None, min_score: float
) -> Detections:
    """Apply a source's class allow-list (None keeps all) and score floor."""
    keep = dets.scores >= min_score
    if classes is not None:
        wanted = set(classes)
        allowed = np.array([i for i, name in enumerate(names) if name in wanted], np.int32)
        keep &= np.isin(dets.class_ids, allowed)
    return dets if bool(keep.all()) else dets.select(keep)


def unknown_classes(classes: Sequence[str] | None, names: Sequence[str]) -> list[str]:
    """The names in `classes` that the model does not know (for a clear error at start)."""
    known = set(names)
    return [name for name in classes or () if name not in known]


def _class_names(model: ModelConfig, metadata: dict[str, str], count: int) -> list[str]:
    if model.names_file is not None:
        names = _read_names_file(Path(model.names_file))
        if len(names) != count:
            raise ModelUnavailable(
                f"{model.names_file}: {len(names)} class names but {model.path} outputs "
                f"{count} classes; fix model.names_file"
            )
        return names
    names = read_class_names(metadata) or []
    if names and len(names) != count:
        log.warning("detector.names_mismatch", names=len(names), classes=count)
    names = names[:count]
    return names + [f"class_{i}" for i in range(len(names), count)]


def _read_names_file(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ModelUnavailable(
            f"names file {path}: cannot read it ({exc.strerror}); fix model.names_file"
        ) from None
    return [line.strip() for line in text.splitlines() if line.strip()]


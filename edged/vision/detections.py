"""The detection record every stage shares."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Detections:
    """Detections of one frame, in source-frame pixels.

    boxes: (n, 4) float32 xyxy; scores: (n,) float32; class_ids: (n,) int32;
    track_ids: (n,) int32 once the tracker has assigned them, else None.
    """

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    track_ids: np.ndarray | None = None

    @classmethod
    def empty(cls) -> Detections:
        return cls(
            np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int32)
        )

    def __len__(self) -> int:
        return len(self.scores)

    def select(self, keep: np.ndarray) -> Detections:
        tracks = None if self.track_ids is None else self.track_ids[keep]
        return Detections(self.boxes[keep], self.scores[keep], self.class_ids[keep], tracks)

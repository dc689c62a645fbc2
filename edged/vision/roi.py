"""Region-of-interest filtering: keep objects standing inside a polygon."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def inside_roi(boxes: np.ndarray, polygon: Sequence[tuple[float, float]]) -> np.ndarray:
    """Mask of boxes (n, 4 xyxy) whose bottom-centre lies inside `polygon` (even-odd rule).

    The bottom-centre is where a person or a vehicle touches the ground, which is what a
    zone drawn on the floor or the street means (Frigate uses the same point).
    """
    if len(boxes) == 0:
        return np.zeros(0, bool)
    px = (boxes[:, 0] + boxes[:, 2]) / 2
    py = boxes[:, 3]
    poly = np.asarray(polygon, np.float64)
    x1, y1 = poly[:, 0], poly[:, 1]
    x2, y2 = np.roll(x1, -1), np.roll(y1, -1)
    # Ray casting to the right: count the edges that straddle the point's y and lie right of it.
    straddle = (y1[None] > py[:, None]) != (y2[None] > py[:, None])
    with np.errstate(divide="ignore", invalid="ignore"):
        cross_x = x1[None] + (py[:, None] - y1[None]) * (x2 - x1)[None] / (y2 - y1)[None]
    hits = straddle & (px[:, None] < cross_x)
    return np.count_nonzero(hits, axis=1) % 2 == 1

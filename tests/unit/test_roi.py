"""ROI: a box counts as inside when the point it stands on is inside the polygon."""

from __future__ import annotations

import numpy as np

from edged.vision.roi import inside_roi

SQUARE = [(100.0, 100.0), (300.0, 100.0), (300.0, 300.0), (100.0, 300.0)]
L_SHAPE = [(0.0, 0.0), (200.0, 0.0), (200.0, 100.0), (100.0, 100.0), (100.0, 200.0),
           (0.0, 200.0)]


def test_bottom_centre_decides() -> None:
    boxes = np.array([
        [150, 50, 250, 200],   # feet at (200, 200): inside though the head is outside
        [150, 250, 250, 350],  # feet at (200, 350): outside though the top is inside
        [0, 0, 50, 50],        # far away
    ], np.float32)
    assert inside_roi(boxes, SQUARE).tolist() == [True, False, False]


def test_concave_polygon() -> None:
    boxes = np.array([[40, 0, 60, 150], [140, 0, 160, 150], [140, 0, 160, 50]], np.float32)
    assert inside_roi(boxes, L_SHAPE).tolist() == [True, False, True]


def test_no_boxes() -> None:
    assert inside_roi(np.zeros((0, 4), np.float32), SQUARE).shape == (0,)

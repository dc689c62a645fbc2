"""Letterbox geometry, padding, buffer reuse and the inverse mapping."""

from __future__ import annotations

import tracemalloc

import cv2
import numpy as np
import pytest

from edged.vision.letterbox import Letterboxer, LetterboxInfo, unletterbox

# (height, width, input side): landscape, portrait, square, up- and downscaling, odd sizes
CASES = [
    (480, 640, 416),
    (1080, 1920, 320),
    (1080, 810, 416),
    (576, 768, 640),
    (100, 100, 416),
    (416, 416, 416),
    (2000, 300, 320),
    (37, 1001, 320),
    (333, 777, 416),
]


def expected_geometry(h: int, w: int, size: int) -> tuple[float, int, int, int, int]:
    r = min(size / h, size / w)
    nw, nh = round(w * r), round(h * r)
    return r, nw, nh, (size - nw) // 2, (size - nh) // 2


def rectangle_frame(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    frame = np.zeros((h, w, 3), np.uint8)
    x1, y1, x2, y2 = int(w * 0.23), int(h * 0.31), int(w * 0.81), int(h * 0.77)
    frame[y1:y2, x1:x2] = 255
    return frame, np.array([x1, y1, x2, y2], np.float64)


def crossings(values: np.ndarray) -> tuple[float, float]:
    """Sub-pixel positions (pixel edges at integers) where a 0..255 profile crosses 50%."""
    half = 127.5
    above = np.nonzero(values >= half)[0]
    i, j = above[0], above[-1]
    left = float(i - 0.5 + (half - values[i - 1]) / (values[i] - values[i - 1])) if i else 0.0
    if j + 1 < len(values):
        right = float(j + 0.5 + (values[j] - half) / (values[j] - values[j + 1]))
    else:
        right = float(len(values))
    return left, right


@pytest.mark.parametrize(("h", "w", "size"), CASES)
def test_geometry_and_padding(h: int, w: int, size: int) -> None:
    frame = np.random.default_rng(h * w).integers(0, 256, (h, w, 3), np.uint8)
    lb = Letterboxer(size)
    info = lb.letterbox(frame)
    r, nw, nh, px, py = expected_geometry(h, w, size)
    assert info == LetterboxInfo(pytest.approx(r), px, py)

    inside = np.zeros((size, size), bool)
    inside[py : py + nh, px : px + nw] = True
    assert (lb.canvas[~inside] == 114).all()
    resized = cv2.resize(frame, (nw, nh), interpolation=cv2.INTER_LINEAR)
    assert np.array_equal(lb.canvas[py : py + nh, px : px + nw], resized)

    assert lb.tensor.shape == (1, 3, size, size) and lb.tensor.dtype == np.float32
    expected = lb.canvas[:, :, ::-1].transpose(2, 0, 1).astype(np.float32) / np.float32(255)
    assert np.array_equal(lb.tensor[0], expected)
    assert np.allclose(lb.tensor[0][:, ~inside], 114 / 255)


@pytest.mark.parametrize(("h", "w", "size"), CASES)
def test_known_box_maps_back_within_half_a_pixel(h: int, w: int, size: int) -> None:
    """A rectangle drawn in the frame, found in the letterboxed canvas by its 50% edges and
    mapped back with unletterbox, lands within 0.5 px of where it was drawn (0.5 px of the
    input resolution: a 6x downscale cannot place an edge better than 1/6 of a source px)."""
    frame, box = rectangle_frame(h, w)
    lb = Letterboxer(size)
    info = lb.letterbox(frame)
    r, nw, nh, px, py = expected_geometry(h, w, size)
    image = lb.canvas[py : py + nh, px : px + nw, 0].astype(np.float64)
    mid_x = int(((box[0] + box[2]) / 2) * r)
    mid_y = int(((box[1] + box[3]) / 2) * r)
    left, right = crossings(image[mid_y])
    top, bottom = crossings(image[:, mid_x])
    found = np.array([[left + px, top + py, right + px, bottom + py]])

    back = unletterbox(found, info, frame.shape)[0]
    assert np.abs(back - box).max() * min(r, 1.0) <= 0.5


@pytest.mark.parametrize(("h", "w", "size"), CASES)
def test_unletterbox_inverts_the_documented_mapping(h: int, w: int, size: int) -> None:
    r, _, _, px, py = expected_geometry(h, w, size)
    boxes = np.array([[0.1 * w, 0.2 * h, 0.7 * w, 0.9 * h], [0, 0, w, h], [w / 3, h / 3, w / 2, h]])
    forward = boxes * r + np.array([px, py, px, py])
    back = unletterbox(forward.astype(np.float32), LetterboxInfo(r, px, py), (h, w, 3))
    assert back.dtype == np.float32 and back.shape == boxes.shape
    assert np.abs(back - boxes).max() <= 0.5


def test_unletterbox_clips_to_the_frame() -> None:
    info = LetterboxInfo(0.5, 0, 10)
    out = unletterbox(np.array([[-20, 0, 400, 500]], np.float32), info, (300, 640, 3))
    assert out.tolist() == [[0, 0, 640, 300]]
    assert unletterbox(np.zeros((0, 4), np.float32), info, (300, 640)).shape == (0, 4)


def test_buffers_are_reused_without_allocation() -> None:
    lb = Letterboxer(416)
    tensor, canvas = lb.tensor, lb.canvas
    frame = np.random.default_rng(1).integers(0, 256, (720, 1280, 3), np.uint8)
    lb.letterbox(frame)  # first call of a frame size paints the padding
    tracemalloc.start()
    try:
        for _ in range(3):
            lb.letterbox(frame)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert lb.tensor is tensor and lb.canvas is canvas
    assert peak < 64 * 1024, f"letterbox allocated {peak} bytes per call (tensor is 2 MB)"


def test_frame_size_change_repaints_padding() -> None:
    lb = Letterboxer(320)
    lb.letterbox(np.full((100, 400, 3), 7, np.uint8))  # wide: padding above and below
    info = lb.letterbox(np.full((400, 100, 3), 9, np.uint8))  # tall: padding left and right
    assert info.pad_y == 0 and info.pad_x == 120
    assert (lb.canvas[:, :120] == 114).all() and (lb.canvas[:, 200:] == 114).all()
    assert (lb.canvas[:, 120:200] == 9).all()
    assert np.allclose(lb.tensor[0, :, :, :120], 114 / 255)


def test_rejects_non_bgr_frames() -> None:
    lb = Letterboxer(320)
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        lb.letterbox(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        lb.letterbox(np.zeros((10, 10, 3), np.float32))

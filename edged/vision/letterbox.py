"""Aspect-preserving resize of a BGR frame into the model's square input tensor.

Geometry (the reference tests re-implement this independently, keep them in step):

    S              square input side
    h, w           source frame height and width
    scale  r     = min(S / h, S / w)
    nw, nh       = round(w * r), round(h * r)          (Python round)
    pad_x        = (S - nw) // 2,  pad_y = (S - nh) // 2
    canvas       = S x S x 3 uint8 filled with 114; the frame resized with
                   cv2.resize(..., (nw, nh), interpolation=cv2.INTER_LINEAR) is placed at
                   rows [pad_y, pad_y + nh), columns [pad_x, pad_x + nw)
    tensor       = canvas BGR -> RGB, HWC -> CHW, float32 / 255, shape [1, 3, S, S]

A source point (x, y) lands at (x * r + pad_x, y * r + pad_y) in the input; `unletterbox`
applies the inverse ((X - pad_x) / r, (Y - pad_y) / r) and clips to the frame. Using the single
scale r rather than nw / w (as Ultralytics does) costs at most 0.5 input pixel at the far edge.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

PAD_VALUE = 114
_255 = np.float32(255.0)


@dataclass(frozen=True)
class LetterboxInfo:
    """How one frame was placed in the input: input = source * scale + pad."""

    scale: float
    pad_x: int
    pad_y: int


def letterbox_geometry(height: int, width: int, size: int) -> tuple[float, int, int, int, int]:
    """(scale, new_w, new_h, pad_x, pad_y) for a `height` x `width` frame in a `size` square."""
    scale = min(size / height, size / width)
    new_w = min(size, max(1, round(width * scale)))
    new_h = min(size, max(1, round(height * scale)))
    return scale, new_w, new_h, (size - new_w) // 2, (size - new_h) // 2


class Letterboxer:
    """Owns the canvas and input tensor of one input size; `letterbox` refills them in place.

    Per frame nothing is allocated: cv2.resize writes straight into the canvas region and the
    float conversion writes into the tensor with `out=`. The padding is only repainted when
    the placement changes (a new frame size), because it is constant otherwise.
    """

    def __init__(self, size: int) -> None:
        if size <= 0:
            raise ValueError(f"letterbox size must be positive, got {size}")
        self.size = size
        self.canvas = np.full((size, size, 3), PAD_VALUE, np.uint8)
        self.tensor = np.empty((1, 3, size, size), np.float32)
        self.tensor.fill(PAD_VALUE / 255.0)
        self._placement: tuple[int, int, int, int, int, int] | None = None
        self._scale = 1.0

    def letterbox(self, frame_bgr: np.ndarray) -> LetterboxInfo:
        """Resize `frame_bgr` (HxWx3 uint8 BGR) into `self.canvas` and `self.tensor`."""
        if frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3 or frame_bgr.dtype != np.uint8:
            raise ValueError(
                f"expected an HxWx3 uint8 BGR frame, got {frame_bgr.shape} {frame_bgr.dtype}"
            )
        height, width = frame_bgr.shape[:2]
        if self._placement is None or self._placement[:2] != (height, width):
            scale, new_w, new_h, pad_x, pad_y = letterbox_geometry(height, width, self.size)
            self._repaint_padding()
            self._placement = (height, width, new_w, new_h, pad_x, pad_y)
            self._scale = scale
        _, _, new_w, new_h, pad_x, pad_y = self._placement
        roi = self.canvas[pad_y : pad_y + new_h, pad_x : pad_x + new_w]
        if (new_w, new_h) == (width, height):
            np.copyto(roi, frame_bgr)
        else:
            cv2.resize(frame_bgr, (new_w, new_h), dst=roi, interpolation=cv2.INTER_LINEAR)
        # Only the image region changes between frames of one size; reversing the channel
        # axis is the BGR -> RGB swap, done as a view so the division is the only pass.
        np.divide(
            roi[:, :, ::-1].transpose(2, 0, 1),
            _255,
            out=self.tensor[0, :, pad_y : pad_y + new_h, pad_x : pad_x + new_w],
        )
        return LetterboxInfo(self._scale, pad_x, pad_y)

    def _repaint_padding(self) -> None:
        self.canvas.fill(PAD_VALUE)
        self.tensor.fill(PAD_VALUE / 255.0)


def unletterbox(
    boxes_xyxy: np.ndarray, info: LetterboxInfo, frame_shape: tuple[int, ...]
) -> np.ndarray:
    """Map (n, 4) xyxy boxes from input pixels to source-frame pixels, clipped to the frame.

    Returns a new float32 array; `frame_shape` is the source frame's (h, w[, c]).
    """
    height, width = frame_shape[:2]
    out = np.asarray(boxes_xyxy, np.float32).reshape(-1, 4).copy()
    xs, ys = out[:, 0::2], out[:, 1::2]  # views, so the in-place ops reach `out`
    xs -= np.float32(info.pad_x)
    ys -= np.float32(info.pad_y)
    out /= np.float32(info.scale)
    np.clip(xs, 0, width, out=xs)
    np.clip(ys, 0, height, out=ys)
    return out

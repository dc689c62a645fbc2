"""PNG of per-variant latency distributions, drawn with OpenCV (no matplotlib dependency).

One panel per input size; one row per variant: every run as a dot, the P25-P75 box, the
median as a bar, whiskers to P5 and P95, and the P50 value written at the right. The x axis
is shared by all panels so sizes compare at a glance.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np

_W, _LEFT, _RIGHT, _ROW, _TOP = 1100, 150, 120, 34, 56
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_COLOURS = [(180, 119, 31), (14, 127, 255), (44, 160, 44), (40, 39, 214), (189, 103, 148),
            (75, 86, 140), (194, 119, 227)]  # BGR of the tab10 palette


def plot_latencies(result: dict[str, Any], out: Path, title: str = "") -> Path:
    """Draw `bench_variants` output to `out` (PNG); returns the path."""
    blocks = result["sizes"]
    # The axis ends past the slowest P95, not the slowest run: one stall on a busy machine
    # would otherwise squeeze every box into a corner. Slower runs sit on the right edge.
    p95s = [float(np.percentile(ts, 95)) for b in blocks for ts in b["times_ms"].values() if ts]
    hi = _nice(max(p95s) * 1.15) if p95s else 1.0
    panel_h = [_TOP + _ROW * len(b["times_ms"]) + 30 for b in blocks]
    height = 50 + sum(panel_h) + 40
    img = np.full((height, _W, 3), 255, np.uint8)
    heading = title or f"inference latency per variant - {Path(result['model']).name}"
    _text(img, heading, (20, 32), 0.7, 2)
    y0 = 50
    plot_w = _W - _LEFT - _RIGHT

    def x_of(ms: float) -> int:
        return _LEFT + round(min(ms, hi) / hi * plot_w)

    rng = np.random.default_rng(0)
    for block, h in zip(blocks, panel_h, strict=True):
        _text(img, f"input {block['size']}x{block['size']}", (20, y0 + 28), 0.6, 2)
        axis_y = y0 + h - 24
        for tick in _ticks(hi):
            x = x_of(tick)
            cv2.line(img, (x, y0 + 40), (x, axis_y), (225, 225, 225), 1)
            _text(img, f"{tick:g}", (x - 12, axis_y + 18), 0.45)
        cv2.line(img, (_LEFT, axis_y), (_LEFT + plot_w, axis_y), (0, 0, 0), 1)
        for i, (name, times) in enumerate(block["times_ms"].items()):
            colour = _COLOURS[i % len(_COLOURS)]
            cy = y0 + _TOP + i * _ROW
            _text(img, name, (20, cy + 5), 0.5)
            t = np.asarray(times, float)
            p5, p25, p50, p75, p95 = np.percentile(t, [5, 25, 50, 75, 95])
            for value, dy in zip(t, rng.uniform(-9, 9, len(t)), strict=True):
                cv2.circle(img, (x_of(value), cy + round(dy)), 2, _light(colour), -1,
                           cv2.LINE_AA)
            cv2.line(img, (x_of(p5), cy), (x_of(p95), cy), colour, 1, cv2.LINE_AA)
            cv2.rectangle(img, (x_of(p25), cy - 8), (x_of(p75), cy + 8), colour, 2)
            cv2.line(img, (x_of(p50), cy - 11), (x_of(p50), cy + 11), (0, 0, 0), 2)
            _text(img, f"p50 {p50:.1f} ms", (_W - _RIGHT + 8, cy + 5), 0.45)
        y0 += h
    _text(img, "milliseconds per inference (box P25-P75, bar P50, whiskers P5-P95, dots: "
               "every run; runs interleaved across variants)", (20, height - 14), 0.45)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), img):
        raise OSError(f"{out}: cannot write PNG")
    return out


def _text(img: np.ndarray, text: str, at: tuple[int, int], scale: float,
          thickness: int = 1) -> None:
    cv2.putText(img, text, at, _FONT, scale, (30, 30, 30), thickness, cv2.LINE_AA)


def _light(colour: tuple[int, int, int]) -> tuple[int, int, int]:
    b, g, r = colour
    return (b + (255 - b) // 2, g + (255 - g) // 2, r + (255 - r) // 2)


def _nice(value: float) -> float:
    """The smallest 1/2/5 x 10^k at or above `value` (axis end)."""
    if value <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(value))
    return next(m * exp for m in (1, 2, 2.5, 5, 10) if m * exp >= value)


def _ticks(hi: float) -> list[float]:
    step = _nice(hi / 8)
    return [round(i * step, 6) for i in range(int(hi / step) + 1)]

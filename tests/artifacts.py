"""Heavy test artifacts (NCNN twins, INT8 models), built once per test session.

Session-scoped fixtures in several modules call these; the module-level cache makes the
second caller reuse the first one's files, so each artifact is built once per `pytest` run.
Calibration uses 32 frames from the first half of the sample video; accuracy tests evaluate
on the second half, so no evaluated frame was seen during calibration.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edged.tools.eval import Frames, video_frames

CALIB_RANGE = (0, 398, 12)  # start, stop, every: 32 frames of vtest.avi's first half
EVAL_RANGE = (398, None, 10)  # 40 frames of its second half
_cache: dict[str, Path] = {}


def calibration_frames(video: Path) -> Frames:
    start, stop, every = CALIB_RANGE
    return video_frames(video, start, stop, every, limit=32)


def eval_frames(video: Path) -> Frames:
    start, stop, every = EVAL_RANGE
    return video_frames(video, start, stop, every)


def ncnn_model(factory: pytest.TempPathFactory, model: Path, sizes: tuple[int, ...] = (416, 320)
               ) -> Path:
    """A link to `model` in a scratch folder, with NCNN twins at `sizes` beside it."""
    if "ncnn" not in _cache:
        from edged.tools.ncnn_convert import convert_ncnn

        folder = factory.mktemp("ncnn")
        link = folder / model.name
        link.symlink_to(model.resolve())
        convert_ncnn(link, list(sizes))
        _cache["ncnn"] = link
    return _cache["ncnn"]


def int8_model(factory: pytest.TempPathFactory, model: Path, video: Path, mode: str) -> Path:
    """`model` quantized (`static`: calibrated on `calibration_frames`; or `dynamic`)."""
    key = f"int8-{mode}"
    if key not in _cache:
        from edged.tools.quantize import default_output, quantize

        folder = factory.mktemp(key)
        out = default_output(folder / model.name, mode)  # type: ignore[arg-type]
        frames = calibration_frames(video) if mode == "static" else None
        quantize(model, out, mode, calibration=frames, size=416)  # type: ignore[arg-type]
        _cache[key] = out
    return _cache[key]

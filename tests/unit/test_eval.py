"""The accuracy harness: matching, P/R, pycocotools mAP, frame sampling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edged.config import ModelConfig
from edged.tools import eval as ev
from edged.vision.detections import Detections


def dets(rows: list[tuple[float, float, float, float, float, int]]) -> Detections:
    if not rows:
        return Detections.empty()
    a = np.asarray(rows, np.float64)
    return Detections(a[:, :4].astype(np.float32), a[:, 4].astype(np.float32),
                      a[:, 5].astype(np.int32))


REF = dets([(10, 10, 50, 90, 0.9, 0), (100, 20, 160, 120, 0.6, 0), (200, 50, 260, 80, 0.4, 2)])


def test_identical_detections_score_perfectly() -> None:
    s = ev.score([REF, REF], [REF, REF], conf=0.25)
    assert s["map50"] == s["map50_95"] == 1.0
    assert s["precision"] == s["recall"] == 1.0
    assert s["per_class"] == {"0": {"labels": 4, "detections": 4, "true_positives": 4},
                              "2": {"labels": 2, "detections": 2, "true_positives": 2}}


def test_a_miss_an_extra_and_a_wrong_class() -> None:
    found = dets([(11, 11, 51, 91, 0.8, 0),  # matches (IoU ~0.95)
                  (200, 50, 260, 80, 0.5, 1),  # right place, wrong class: fp, and a miss
                  (300, 300, 340, 340, 0.7, 0)])  # nothing there: fp
    s = ev.score([REF], [found], conf=0.25)
    assert (s["true_positives"], s["false_positives"], s["false_negatives"]) == (1, 2, 2)
    assert s["precision"] == pytest.approx(1 / 3, abs=1e-3)
    assert s["recall"] == pytest.approx(1 / 3, abs=1e-3)
    assert 0 < s["map50"] < 1


def test_the_operating_threshold_cuts_both_sides() -> None:
    # The reference's 0.4 box is no label at conf 0.5, so the candidate is not blamed for it.
    found = dets([(10, 10, 50, 90, 0.85, 0), (100, 20, 160, 120, 0.55, 0)])
    s = ev.score([REF], [found], conf=0.5)
    assert s["precision"] == s["recall"] == 1.0


def test_low_iou_is_no_match() -> None:
    shifted = dets([(30, 10, 70, 90, 0.9, 0)])  # IoU 1/3 with the first reference box
    assert ev.match(REF.select(np.array([True, False, False])), shifted, 0.5) == 0
    assert ev.match(REF.select(np.array([True, False, False])), shifted, 0.3) == 1


def test_no_labels_and_no_detections() -> None:
    empty = Detections.empty()
    s = ev.score([empty], [empty], conf=0.25)
    assert s["map50"] == 1.0 and s["precision"] == s["recall"] == 1.0


def test_parse_range() -> None:
    assert ev.parse_range("0:398:12") == (0, 398, 12)
    assert ev.parse_range("398::10") == (398, None, 10)
    assert ev.parse_range(None) == (0, None, 1)


def test_video_sampling_is_disjoint_and_exact(sample_video: Path) -> None:
    calib = ev.video_frames(sample_video, 0, 398, 12, limit=32)
    held_out = ev.video_frames(sample_video, 398, None, 10)
    assert len(calib) == 32 and calib.ids[1] == "vtest.avi#12"
    assert held_out.ids[0] == "vtest.avi#398" and len(held_out) == 40
    assert not set(calib.ids) & set(held_out.ids)
    assert calib.images[0].shape == (576, 768, 3)


def test_image_folder(sample_photos: list[Path], tmp_path: Path) -> None:
    frames = ev.image_frames(sample_photos[0].parent, limit=3)
    assert len(frames) == 3 and frames.ids == sorted(frames.ids)
    with pytest.raises(OSError, match="no readable images"):
        ev.image_frames(tmp_path)


@pytest.mark.slow
def test_model_against_itself(default_model: Path, sample_photos: list[Path]) -> None:
    frames = ev.image_frames(sample_photos[0].parent)
    model = ModelConfig(path=default_model, input_size=320)
    result = ev.evaluate(model, model, frames, names=["person"] + ["x"] * 79)
    assert result["map50"] == result["recall"] == result["precision"] == 1.0
    assert "no ground truth" in result["pseudo_labels"]
    assert result["per_class"]["person"]["labels"] >= 5
    assert "mAP50 1.0000" in ev.format_eval(result)

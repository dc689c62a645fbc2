"""Multi-object tracker (ByteTrack-style): stable ids, and boxes for the frames we skip.

Each track carries a constant-velocity Kalman filter on (cx, cy, w, h) with noise scaled by
the box size (the BoT-SORT formulation). Time is counted in frames: call `update()` on every
inferred frame and `predict()` on every skipped one, so velocities stay in pixels per frame
whatever the frame-skip.

Association on an inferred frame, after one Kalman step of every track:
1. high-score detections vs confirmed tracks (live or lost), Hungarian on IoU;
2. low-score detections vs the confirmed tracks still unmatched that were live at the last
   inference (a partly occluded object keeps its track instead of spawning a new one);
3. remaining high-score detections vs tentative tracks; unmatched tentative tracks die;
4. remaining high-score detections start tentative tracks.
IoU is taken on boxes widened by `match_buffer` on each side (C-BIoU): a 15 px pedestrian
moving 8 px a frame leaves its own box between two inferences three frames apart, and an
unbuffered IoU would then start a new id. Pairs of different classes never match. A track
is reported once it has `min_hits` matched inferences, and removed after `max_age` frames
without a match.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from edged.governor_config import TrackerConfig
from edged.vision.detections import Detections

_STD_POS = 1.0 / 20  # process/measurement noise, as a fraction of the box size
_STD_VEL = 1.0 / 160
_MIN_SIDE = 1.0  # px; keeps the noise model and the w/h of a coasting box positive


@dataclass
class Track:
    """A snapshot of one track (a copy: changing it does not change the tracker)."""

    track_id: int
    box: np.ndarray  # (4,) float32 xyxy, source-frame pixels
    score: float  # of the last matched detection
    class_id: int
    hits: int  # matched inferences
    age: int  # frames since the track started
    time_since_update: int  # frames since its last match (0 on the frame it matched)


class _KalmanTrack:
    _F = np.eye(8)
    _F[:4, 4:] = np.eye(4)
    _H = np.eye(4, 8)

    def __init__(self, track_id: int, box: np.ndarray, score: float, class_id: int) -> None:
        self.track_id = track_id
        self.score = score
        self.class_id = class_id
        self.hits = 1
        self.age = 0
        self.time_since_update = 0
        self.live = True  # matched at the most recent inferred frame
        z = _xyxy_to_cxcywh(box)
        self.mean = np.concatenate([z, np.zeros(4)])
        w, h = z[2], z[3]
        std = np.array([2 * _STD_POS * w, 2 * _STD_POS * h] * 2 + [10 * _STD_VEL * w,
                       10 * _STD_VEL * h] * 2)
        self.cov = np.diag(np.square(std))

    def predict(self) -> None:
        w, h = self.mean[2], self.mean[3]
        if not self.live:
            # A lost box keeps moving but stops growing or shrinking: extrapolated size
            # change is what makes long coasts absurd.
            self.mean[6:] = 0.0
        q = np.square([_STD_POS * w, _STD_POS * h] * 2 + [_STD_VEL * w, _STD_VEL * h] * 2)
        self.mean = self._F @ self.mean
        self.mean[2:4] = np.maximum(self.mean[2:4], _MIN_SIDE)
        self.cov = self._F @ self.cov @ self._F.T + np.diag(q)
        self.age += 1
        self.time_since_update += 1

    def update(self, box: np.ndarray, score: float) -> None:
        z = _xyxy_to_cxcywh(box)
        w, h = self.mean[2], self.mean[3]
        r = np.diag(np.square([_STD_POS * w, _STD_POS * h] * 2))
        s = self._H @ self.cov @ self._H.T + r
        gain = np.linalg.solve(s, self._H @ self.cov).T
        self.mean = self.mean + gain @ (z - self._H @ self.mean)
        self.mean[2:4] = np.maximum(self.mean[2:4], _MIN_SIDE)
        self.cov = (np.eye(8) - gain @ self._H) @ self.cov
        self.score = score
        self.hits += 1
        self.time_since_update = 0
        self.live = True

    @property
    def box(self) -> np.ndarray:
        cx, cy, w, h = self.mean[:4]
        return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], np.float32)

    def snapshot(self) -> Track:
        return Track(self.track_id, self.box, float(self.score), int(self.class_id),
                     self.hits, self.age, self.time_since_update)


class Tracker:
    """Track ids across frames; feed every frame in order, inferred or skipped."""

    def __init__(self, cfg: TrackerConfig, first_id: int = 1) -> None:
        self._cfg = cfg
        self._tracks: list[_KalmanTrack] = []
        self._next_id = first_id

    @property
    def next_id(self) -> int:
        """The id the next new track gets (a restarted tracker continues from here)."""
        return self._next_id

    def update(self, dets: Detections, high_score: float | None = None) -> list[Track]:
        """An inferred frame: associate `dets`; returns the confirmed tracks matched now.

        `high_score` overrides the config's first-pass threshold (the daemon passes the
        detection threshold in force, which reloads and the thermal governor change).
        """
        cfg = self._cfg
        high_cut = cfg.high_score if high_score is None else high_score
        for track in self._tracks:
            track.predict()
        high = np.flatnonzero(dets.scores >= high_cut)
        low = np.flatnonzero((dets.scores >= cfg.low_score) & (dets.scores < high_cut))
        confirmed = [t for t in self._tracks if t.hits >= cfg.min_hits]
        tentative = [t for t in self._tracks if t.hits < cfg.min_hits]

        matched, high = self._associate(confirmed, dets, high, cfg.match_iou)
        was_live = [t for t in confirmed if t not in matched and t.live]
        matched_low, _ = self._associate(was_live, dets, low, cfg.low_match_iou)
        matched_new, high = self._associate(tentative, dets, high, cfg.new_match_iou)

        matched |= matched_low | matched_new
        for track in self._tracks:
            track.live = track in matched
        # A tentative track missed once is noise (ByteTrack drops it at once).
        self._tracks = [t for t in self._tracks if t.hits >= cfg.min_hits or t in matched]
        for i in high:
            self._tracks.append(
                _KalmanTrack(self._next_id, dets.boxes[i], float(dets.scores[i]),
                             int(dets.class_ids[i]))
            )
            self._next_id += 1
        self._retire()
        return [t.snapshot() for t in self._tracks
                if t.time_since_update == 0 and t.hits >= cfg.min_hits]

    def predict(self) -> list[Track]:
        """A skipped frame: one Kalman step; the confirmed tracks live at the last inference."""
        for track in self._tracks:
            track.predict()
        self._retire()
        return [t.snapshot() for t in self._tracks if t.live and t.hits >= self._cfg.min_hits]

    def _associate(
        self, tracks: list[_KalmanTrack], dets: Detections, idx: np.ndarray, min_iou: float
    ) -> tuple[set[_KalmanTrack], np.ndarray]:
        """Match detections `idx` to `tracks` (updating them); returns matched, unmatched idx."""
        if not tracks or len(idx) == 0:
            return set(), idx
        buffer = self._cfg.match_buffer
        boxes = np.stack([t.box for t in tracks])
        iou = iou_matrix(_widen(boxes, buffer), _widen(dets.boxes[idx], buffer))
        same_class = np.array([t.class_id for t in tracks])[:, None] == dets.class_ids[idx][None]
        iou = np.where(same_class, iou, 0.0)
        rows, cols = linear_sum_assignment(iou, maximize=True)
        matched: set[_KalmanTrack] = set()
        used = np.zeros(len(idx), bool)
        for r, c in zip(rows, cols, strict=True):
            if iou[r, c] >= min_iou:
                tracks[r].update(dets.boxes[idx[c]], float(dets.scores[idx[c]]))
                matched.add(tracks[r])
                used[c] = True
        return matched, idx[~used]

    def _retire(self) -> None:
        self._tracks = [t for t in self._tracks if t.time_since_update <= self._cfg.max_age]


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, m) IoU of xyxy boxes `a` (n, 4) and `b` (m, 4)."""
    a = a.astype(np.float64)[:, None]
    b = b.astype(np.float64)[None]
    w = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    h = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = w * h
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter / np.maximum(area_a + area_b - inter, 1e-9)


def _widen(boxes: np.ndarray, buffer: float) -> np.ndarray:
    """xyxy boxes grown by `buffer` x their width/height on each side (the C-BIoU buffer)."""
    if buffer == 0:
        return boxes
    size = boxes[:, 2:] - boxes[:, :2]
    return np.concatenate([boxes[:, :2] - buffer * size, boxes[:, 2:] + buffer * size], axis=1)


def _xyxy_to_cxcywh(box: np.ndarray) -> np.ndarray:
    x1, y1, x2, y2 = (float(v) for v in box)
    return np.array([(x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, _MIN_SIDE),
                     max(y2 - y1, _MIN_SIDE)])

"""Interim event rule: turn per-frame detections into events (one row per object appearance).

This is a stand-in until a real tracker assigns track ids; the store then keys events on the
track id instead and this module goes away.

The rule, per (source, label):

* The open events are those seen within `event_gap_s` (wall time) of the current frame.
* Each detection of the frame is matched to an open event whose LAST box has IoU >= `event_iou`
  with it. Matching is greedy by IoU over all (event, detection) pairs of the frame, highest
  first, so one detection extends at most one event and an event is extended by at most one
  detection per frame.
* A matched detection extends its event: last_seen, frame_last, hits + 1, last box; and the best
  score/box when its score is higher. An unmatched detection starts a new event.
* Events unseen for more than `event_gap_s` are closed: dropped from memory (their row stays).
  A frame whose wall time is more than `event_gap_s` before an event's last_seen (the clock
  was stepped back) closes that event too.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edged.vision.detections import Detections

Box = tuple[float, float, float, float]


@dataclass(slots=True)
class OpenEvent:
    """An event's current state; `stored` is True once its INSERT has been committed."""

    uid: str
    source: str
    label: str
    class_id: int
    first_seen: float
    last_seen: float
    best_score: float
    best_box: Box
    last_box: Box
    hits: int
    frame_first: int
    frame_last: int
    stored: bool = False


def label_of(class_id: int, names: Sequence[str]) -> str:
    return names[class_id] if 0 <= class_id < len(names) else f"class_{class_id}"


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in a (m, 4) with every box in b (n, 4), xyxy; returns (m, n)."""
    ax1, ay1, ax2, ay2 = np.asarray(a, np.float64).T[:, :, None]
    bx1, by1, bx2, by2 = np.asarray(b, np.float64).T[:, None, :]
    iw = np.maximum(np.minimum(ax2, bx2) - np.maximum(ax1, bx1), 0.0)
    ih = np.maximum(np.minimum(ay2, by2) - np.maximum(ay1, by1), 0.0)
    inter = iw * ih
    area_a = np.maximum(ax2 - ax1, 0.0) * np.maximum(ay2 - ay1, 0.0)
    area_b = np.maximum(bx2 - bx1, 0.0) * np.maximum(by2 - by1, 0.0)
    union = area_a + area_b - inter
    out = np.zeros_like(inter)
    np.divide(inter, union, out=out, where=union > 0)
    return out


class EventRule:
    """Holds the open events in memory and applies the rule to each frame."""

    def __init__(self, event_iou: float, event_gap_s: float) -> None:
        self.event_iou = event_iou
        self.event_gap_s = event_gap_s
        self._open: dict[tuple[str, str], list[OpenEvent]] = {}

    @property
    def open_count(self) -> int:
        return sum(len(events) for events in self._open.values())

    def open_events(self) -> list[OpenEvent]:
        return [event for events in self._open.values() for event in events]

    def expire(self, now_wall: float) -> int:
        """Close events unseen for more than event_gap_s; returns how many were closed."""
        closed = 0
        for key in list(self._open):
            events = self._open[key]
            keep = [e for e in events if abs(now_wall - e.last_seen) <= self.event_gap_s]
            closed += len(events) - len(keep)
            if keep:
                self._open[key] = keep
            else:
                del self._open[key]
        return closed

    def observe(
        self,
        source: str,
        frame_seq: int,
        wall_time: float,
        dets: Detections,
        names: Sequence[str],
    ) -> list[OpenEvent]:
        """Apply one frame; returns the events it created or extended (each once)."""
        self.expire(wall_time)
        if len(dets) == 0:
            return []
        boxes = np.asarray(dets.boxes, dtype=np.float64).reshape(-1, 4)
        box_list: list[Box] = [tuple(row) for row in boxes.tolist()]  # type: ignore[misc]
        scores: list[float] = np.asarray(dets.scores, dtype=np.float64).reshape(-1).tolist()
        class_ids: list[int] = np.asarray(dets.class_ids).reshape(-1).astype(int).tolist()
        labels = [label_of(c, names) for c in class_ids]
        touched: list[OpenEvent] = []
        for label in dict.fromkeys(labels):
            idx = [i for i, name in enumerate(labels) if name == label]
            events = self._open.setdefault((source, label), [])
            matched = self._match(events, boxes[idx]) if events else {}
            for local, det in enumerate(idx):
                box = box_list[det]
                score = scores[det]
                event = matched.get(local)
                if event is None:
                    event = OpenEvent(
                        uid=uuid.uuid4().hex,
                        source=source,
                        label=label,
                        class_id=class_ids[det],
                        first_seen=wall_time,
                        last_seen=wall_time,
                        best_score=score,
                        best_box=box,
                        last_box=box,
                        hits=1,
                        frame_first=frame_seq,
                        frame_last=frame_seq,
                    )
                    events.append(event)
                else:
                    event.last_seen = max(event.last_seen, wall_time)
                    event.frame_last = frame_seq
                    event.hits += 1
                    event.last_box = box
                    if score > event.best_score:
                        event.best_score = score
                        event.best_box = box
                touched.append(event)
        return touched

    def _match(self, events: list[OpenEvent], det_boxes: np.ndarray) -> dict[int, OpenEvent]:
        """Greedy IoU matching: detection index (within det_boxes) -> event it extends."""
        iou = iou_matrix(np.array([e.last_box for e in events]), det_boxes)
        rows, cols = np.nonzero(iou >= self.event_iou)
        if len(rows) == 0:
            return {}
        values = iou[rows, cols].tolist()
        # Highest IoU first; ties broken by event order, then detection order.
        pairs = sorted(zip(values, rows.tolist(), cols.tolist(), strict=True),
                       key=lambda p: (-p[0], p[1], p[2]))  # fmt: skip
        used_events: set[int] = set()
        matched: dict[int, OpenEvent] = {}
        for _, e, d in pairs:
            if e in used_events or d in matched:
                continue
            used_events.add(e)
            matched[d] = events[e]
        return matched

"""Track rule: turn the tracker's per-frame output into events, one row per track.

The inference worker runs the tracker (`edged.vision.tracker`) and sends every frame's
detections with their `track_ids`, plus a `predicted` flag on the frames it skipped (there the
boxes are the tracker's Kalman predictions, not observations). The rule, per (source, track_id):

* A tracked detection on an INFERRED frame is an observation. The first observation of a track
  creates its event (first_seen/last_seen, frame_first/frame_last, hits = 1, best score/box);
  every later one extends it: last_seen, frame_last, hits + 1, and the best score/box when its
  score is higher.
* A PREDICTED frame never creates an event and never changes one: not hits, not the best
  score/box (a Kalman guess is not an observation), and not last_seen either: last_seen means
  "last observed", so an event's span is what the camera actually saw, and a track coasting
  through an occlusion does not keep its event open on guesses alone. Predicted boxes are still
  kept as raw detections (with predicted = 1) when `record_detections` is on.
* An event closes (dropped from memory; its row stays) when its track goes unobserved for more
  than `event_gap_s` (wall time), or when a frame's wall time is more than `event_gap_s` BEFORE
  its last_seen (the clock was stepped back). A track that is observed again after its event
  closed (same id: the tracker coasted it for longer than the gap) starts a NEW event: an event
  is a continuous sighting, and event_gap_s, not the tracker's max_age, says how long a gap may
  be. Raise event_gap_s to keep such sightings in one row.
* The same (source, track_id) observed with a different class is a different object: the
  tracker never changes a track's class, so this only happens when ids start over (the inference
  worker was restarted within event_gap_s of the old track's last sighting). The old event is
  closed and a new one started (`store.track_id_reused`).

Detections without track ids are a programming error here (ValueError): everything the sink
stores went through the tracker. An empty frame needs none (the result ring hands those over
with `track_ids=None`).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import structlog

from edged.vision.detections import Detections

log = structlog.get_logger()

Box = tuple[float, float, float, float]


@dataclass(slots=True)
class OpenEvent:
    """An event's current state; `stored` is True once its INSERT has been committed."""

    uid: str
    source: str
    label: str
    class_id: int
    track_id: int
    first_seen: float
    last_seen: float
    best_score: float
    best_box: Box
    hits: int
    frame_first: int
    frame_last: int
    stored: bool = False


def label_of(class_id: int, names: Sequence[str]) -> str:
    return names[class_id] if 0 <= class_id < len(names) else f"class_{class_id}"


def track_ids_of(dets: Detections) -> list[int]:
    """The frame's track ids as ints; ValueError when detections were never tracked."""
    if len(dets) == 0:
        return []
    if dets.track_ids is None:
        raise ValueError(
            f"{len(dets)} detections without track_ids reached the event store; run them "
            "through edged.vision.tracker.Tracker first (the inference worker does) or build "
            "Detections with track_ids"
        )
    ids: list[int] = np.asarray(dets.track_ids).reshape(-1).astype(np.int64).tolist()
    if len(ids) != len(dets) or min(ids) < 0:
        # -1 is the result ring's "no track" marker.
        raise ValueError(
            f"{len(ids)} track_ids (min {min(ids, default=0)}) for {len(dets)} detections: "
            "every detection needs a track id >= 0; run them through "
            "edged.vision.tracker.Tracker first"
        )
    return ids


class TrackEvents:
    """Holds the open events in memory, keyed by (source, track_id), and applies the rule."""

    def __init__(self, event_gap_s: float) -> None:
        self.event_gap_s = event_gap_s
        self._open: dict[tuple[str, int], OpenEvent] = {}

    @property
    def open_count(self) -> int:
        return len(self._open)

    def open_events(self) -> list[OpenEvent]:
        return list(self._open.values())

    def expire(self, now_wall: float) -> int:
        """Close events unobserved for more than event_gap_s; returns how many were closed."""
        stale = [
            key
            for key, event in self._open.items()
            # abs(): a clock stepped back by more than the gap closes the event too.
            if abs(now_wall - event.last_seen) > self.event_gap_s
        ]
        for key in stale:
            del self._open[key]
        return len(stale)

    def observe(
        self,
        source: str,
        frame_seq: int,
        wall_time: float,
        dets: Detections,
        names: Sequence[str],
        predicted: bool = False,
    ) -> list[OpenEvent]:
        """Apply one frame; returns the events it created or extended (each once)."""
        # Validate first, so a bad frame changes nothing (and fails even when predicted).
        track_ids = track_ids_of(dets)
        # Time passes on every frame, predicted or empty: that is what closes events.
        self.expire(wall_time)
        if predicted or not track_ids:
            return []
        boxes = np.asarray(dets.boxes, dtype=np.float64).reshape(-1, 4).tolist()
        scores: list[float] = np.asarray(dets.scores, dtype=np.float64).reshape(-1).tolist()
        class_ids: list[int] = np.asarray(dets.class_ids).reshape(-1).astype(int).tolist()
        touched: dict[str, OpenEvent] = {}
        for box, score, class_id, track_id in zip(boxes, scores, class_ids, track_ids,
                                                  strict=True):  # fmt: skip
            key = (source, track_id)
            event = self._open.get(key)
            if event is not None and event.class_id != class_id:
                log.warning("store.track_id_reused", source=source, track_id=track_id,
                            old_label=event.label, new_label=label_of(class_id, names),
                            hint="track ids started over (inference restarted?)")  # fmt: skip
                event = None
            if event is None:
                event = OpenEvent(
                    uid=uuid.uuid4().hex,
                    source=source,
                    label=label_of(class_id, names),
                    class_id=class_id,
                    track_id=track_id,
                    first_seen=wall_time,
                    last_seen=wall_time,
                    best_score=score,
                    best_box=(box[0], box[1], box[2], box[3]),
                    hits=1,
                    frame_first=frame_seq,
                    frame_last=frame_seq,
                )
                self._open[key] = event
            else:
                event.last_seen = max(event.last_seen, wall_time)
                event.frame_last = frame_seq
                event.hits += 1
                if score > event.best_score:
                    event.best_score = score
                    event.best_box = (box[0], box[1], box[2], box[3])
            touched[event.uid] = event
        return list(touched.values())

"""The write buffer: rows waiting for the next commit, and the statements that write them.

* events: one entry per event, holding its latest state. A new event is INSERTed; an event
  already stored is UPDATEd by uid, so within one batch an event costs a single statement
  however many frames extended it. An update that finds no row (retention pruned the row of an
  event that is still open) re-inserts it: the event is current, it belongs in the file.
  The UPDATE leaves source, label and track_id alone: they never change for a uid.
* detections (only with `record_detections`, with their track id and the frame's predicted
  flag) and system events are INSERTed with executemany.

Raw detections are the only rows ever dropped from the buffer: beyond `detections_cap` (while
commits keep failing) and when a batch cannot fit in the size cap even after pruning; the
oldest go first, counted in `dropped_detections`. Events and system events are never dropped.

Every event row written also queues it for upstream sync (`edged.store.outbox`) in the same
transaction: its outbox row is created or its version bumped. Ended events (with the path of
their snapshot, if any) are marked ended there too, after their last update.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence

import numpy as np

from edged.store.tracks import OpenEvent, label_of, track_ids_of
from edged.vision.detections import Detections

_INSERT_EVENT = (
    "INSERT INTO events (uid, source, label, class_id, track_id, first_seen, last_seen,"
    " best_score, x1, y1, x2, y2, hits, frame_first, frame_last)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    # Idempotent: if a COMMIT reported failure but reached the disk, the retry must not fail.
    " ON CONFLICT (uid) DO UPDATE SET last_seen = excluded.last_seen,"
    " best_score = excluded.best_score, x1 = excluded.x1, y1 = excluded.y1, x2 = excluded.x2,"
    " y2 = excluded.y2, hits = excluded.hits, frame_last = excluded.frame_last"
)
_UPDATE_EVENT = (
    "UPDATE events SET last_seen = ?, best_score = ?, x1 = ?, y1 = ?, x2 = ?, y2 = ?,"
    " hits = ?, frame_last = ? WHERE uid = ?"
)
_INSERT_DETECTION = (
    "INSERT INTO detections (ts, source, frame_seq, label, class_id, score, x1, y1, x2, y2,"
    " track_id, predicted) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_SYSTEM = "INSERT INTO system_events (ts, kind, detail) VALUES (?, ?, ?)"
# Outbox (schema v4): the row is keyed by the event id, found by uid within the transaction.
_QUEUE_OUTBOX = (
    "INSERT INTO outbox (event_id, changed_at) SELECT id, ? FROM events WHERE uid = ?"
    " ON CONFLICT (event_id) DO UPDATE SET version = version + 1,"
    " changed_at = excluded.changed_at"
)
_END_OUTBOX = (
    "UPDATE outbox SET ended = 1, version = version + 1, changed_at = ?"
    " WHERE event_id = (SELECT id FROM events WHERE uid = ?) AND ended = 0"
)
_SET_SNAPSHOT = "UPDATE events SET snapshot = ? WHERE uid = ?"

# Bytes a row takes in the file, table plus index entries, plus a margin for pages that deletes
# left part-empty. Sizes the room to make when the database is full. Measured on 20 000 fresh
# schema-v3 rows with non-integer box coordinates (the tracker's Kalman boxes never are
# integers): events 217 (a random 32-char uid twice, two time indexes, the (source, track_id)
# index), detections 99; system events 80 (schema v1). Schema v4 adds an outbox row per event
# (about 30 bytes, plus its pending-index entry until it is sent).
EVENT_ROW_BYTES = 290
DETECTION_ROW_BYTES = 110
SYSTEM_ROW_BYTES = 100

# ts, source, frame_seq, label, class_id, score, x1, y1, x2, y2, track_id, predicted (0/1)
DetectionRow = tuple[float, str, int, str, int, float, float, float, float, float, int, int]
SystemRow = tuple[float, str, str]


class Batch:
    """Rows buffered for the next commit. Not thread-safe."""

    def __init__(self, detections_cap: int) -> None:
        self.detections_cap = detections_cap
        self.events: dict[str, OpenEvent] = {}  # uid -> event to insert/update next commit
        self.detections: list[DetectionRow] = []
        self.system: list[SystemRow] = []
        self.ended: dict[str, str | None] = {}  # uid -> snapshot path, of events that ended
        self.dropped_detections = 0

    @property
    def rows(self) -> int:
        return len(self.events) + len(self.detections) + len(self.system) + len(self.ended)

    def estimated_bytes(self) -> int:
        """Roughly what committing the batch adds to the file."""
        return (
            len(self.events) * EVENT_ROW_BYTES
            + len(self.detections) * DETECTION_ROW_BYTES
            + len(self.system) * SYSTEM_ROW_BYTES
        )

    def add_event(self, event: OpenEvent) -> None:
        self.events[event.uid] = event

    def add_ended(self, uid: str, snapshot: str | None = None) -> None:
        """The event will not change again: mark it ended (and set its snapshot path)."""
        self.ended[uid] = snapshot

    def add_system(self, row: SystemRow) -> None:
        self.system.append(row)

    def add_detections(
        self,
        source: str,
        frame_seq: int,
        wall_time: float,
        dets: Detections,
        names: Sequence[str],
        predicted: bool = False,
    ) -> None:
        boxes = np.asarray(dets.boxes, dtype=np.float64).reshape(-1, 4).tolist()
        scores = np.asarray(dets.scores, dtype=np.float64).reshape(-1).tolist()
        class_ids = np.asarray(dets.class_ids).reshape(-1).astype(np.int64).tolist()
        flag = int(predicted)
        for box, score, cid, tid in zip(boxes, scores, class_ids, track_ids_of(dets),
                                        strict=True):  # fmt: skip
            label = label_of(cid, names)
            self.detections.append((wall_time, source, frame_seq, label, cid, score,
                                    box[0], box[1], box[2], box[3], tid, flag))  # fmt: skip
        if len(self.detections) > self.detections_cap:
            self.drop_oldest_detections(len(self.detections) - self.detections_cap)

    def drop_oldest_detections(self, count: int) -> int:
        count = min(count, len(self.detections))
        del self.detections[:count]
        self.dropped_detections += count
        return count

    def write(self, conn: sqlite3.Connection) -> tuple[list[OpenEvent], list[OpenEvent]]:
        """Execute the batch's statements inside the caller's open transaction; returns
        (events inserted, events updated)."""
        inserts = [e for e in self.events.values() if not e.stored]
        updates = [e for e in self.events.values() if e.stored]
        if inserts:
            conn.executemany(_INSERT_EVENT, map(_insert_row, inserts))
        if updates:
            changed = conn.executemany(_UPDATE_EVENT, map(_update_row, updates)).rowcount
            if changed < len(updates):
                # Some rows were pruned while their event stayed open: the upsert puts them
                # back and is a plain update for the others.
                conn.executemany(_INSERT_EVENT, map(_insert_row, updates))
        if self.events:
            now = time.time()
            conn.executemany(_QUEUE_OUTBOX, ((now, uid) for uid in self.events))
        if self.ended:
            now = time.time()
            snapshots = [(path, uid) for uid, path in self.ended.items() if path is not None]
            if snapshots:
                conn.executemany(_SET_SNAPSHOT, snapshots)
            conn.executemany(_END_OUTBOX, ((now, uid) for uid in self.ended))
        if self.detections:
            conn.executemany(_INSERT_DETECTION, self.detections)
        if self.system:
            conn.executemany(_INSERT_SYSTEM, self.system)
        return inserts, updates

    def clear(self) -> None:
        self.events.clear()
        self.ended.clear()
        self.detections.clear()
        self.system.clear()


def _insert_row(e: OpenEvent) -> tuple[object, ...]:
    return (e.uid, e.source, e.label, e.class_id, e.track_id, e.first_seen, e.last_seen,
            e.best_score, *e.best_box, e.hits, e.frame_first, e.frame_last)  # fmt: skip


def _update_row(e: OpenEvent) -> tuple[object, ...]:
    return (e.last_seen, e.best_score, *e.best_box, e.hits, e.frame_last, e.uid)

"""EventStore: the sink worker's write side of the SQLite database.

Frames go through the interim event rule in memory (until the tracker replaces it; details in
`edged.store.rule`): a detection extends the open event of the same source + label whose last
box has IoU >= event_iou with it and that was seen within event_gap_s (greedy by IoU, one
detection per event per frame), otherwise it starts a new event; events unseen for longer than
event_gap_s are closed (dropped from memory, their row stays).

The resulting rows are buffered and written in batches, ONE transaction (one fsync'd commit)
per batch:

* events: a new event is INSERTed with its state at commit time; an event already stored is
  UPDATEd by uid. Within one batch an event costs a single statement however many frames
  extended it (the buffer keeps one entry per event, holding its latest state).
* detections (only with `record_detections`) and system_events are INSERTed with executemany.

A failed commit is rolled back and the buffer kept, so the next commit retries it; StoreError
is raised so the caller can log and carry on. If commits keep failing, raw detections beyond
`BUFFER_CAP_BATCHES * commit_max_rows` are dropped (oldest first, counted in
`dropped_detections`); events and system events are never dropped.

Not thread-safe: one EventStore per process, used from one thread.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import structlog

from edged.config import StoreConfig
from edged.store import retention
from edged.store.db import describe, file_bytes, open_writer
from edged.store.rule import EventRule, OpenEvent, label_of
from edged.store.schema import migrate
from edged.vision.detections import Detections

log = structlog.get_logger()

BUFFER_CAP_BATCHES = 10

_INSERT_EVENT = (
    "INSERT INTO events (uid, source, label, class_id, first_seen, last_seen, best_score,"
    " x1, y1, x2, y2, hits, frame_first, frame_last)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
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
    "INSERT INTO detections (ts, source, frame_seq, label, class_id, score, x1, y1, x2, y2)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_SYSTEM = "INSERT INTO system_events (ts, kind, detail) VALUES (?, ?, ?)"

DetectionRow = tuple[float, str, int, str, int, float, float, float, float, float]
SystemRow = tuple[float, str, str]


class EventStore:
    """Batched, crash-safe writer of events, detections and system events."""

    def __init__(self, path: Path, cfg: StoreConfig, conn: sqlite3.Connection) -> None:
        self.path = path
        self.cfg = cfg
        self.schema_version = 0
        self._conn = conn
        self._rule = EventRule(cfg.event_iou, cfg.event_gap_s)
        self._pending: dict[str, OpenEvent] = {}  # uid -> event to insert/update next commit
        self._detections: list[DetectionRow] = []
        self._system: list[SystemRow] = []
        self._last_commit = time.monotonic()
        self._retrying = False
        # Counters for status.
        self.committed_events = 0  # event rows inserted
        self.updated_events = 0  # event rows updated
        self.committed_detections = 0
        self.committed_system_events = 0
        self.rows_committed = 0  # all rows inserted or updated
        self.commits = 0  # transactions committed
        self.failed_commits = 0
        self.dropped_detections = 0
        self.pruned_rows = 0
        self.last_commit_wall: float | None = None

    @classmethod
    def open(cls, path: Path, cfg: StoreConfig) -> EventStore:
        """Open or create the database at `path` and bring its schema up to date."""
        conn = open_writer(path)
        try:
            version = migrate(conn, path)
        except BaseException:
            conn.close()
            raise
        store = cls(path, cfg, conn)
        store.schema_version = version
        log.info("store.opened", path=str(path), schema_version=version, bytes=file_bytes(path))
        return store

    # -- buffering ---------------------------------------------------------------------------

    @property
    def buffered_rows(self) -> int:
        return len(self._pending) + len(self._detections) + len(self._system)

    @property
    def open_events(self) -> int:
        return self._rule.open_count

    def add_frame(
        self,
        source: str,
        frame_seq: int,
        wall_time: float,
        dets: Detections,
        names: Sequence[str],
    ) -> None:
        """Apply the event rule to one frame's detections and buffer the resulting rows."""
        for event in self._rule.observe(source, frame_seq, wall_time, dets, names):
            self._pending[event.uid] = event
        if self.cfg.record_detections and len(dets):
            self._buffer_detections(source, frame_seq, wall_time, dets, names)

    def add_system_event(self, kind: str, **detail: object) -> None:
        """Buffer a system event (start, stop, error, restart, ...) stamped now."""
        text = json.dumps(detail, default=str, sort_keys=True, separators=(",", ":"))
        self._system.append((time.time(), kind, text))

    def _buffer_detections(
        self, source: str, frame_seq: int, wall_time: float, dets: Detections, names: Sequence[str]
    ) -> None:
        boxes = np.asarray(dets.boxes, dtype=np.float64).reshape(-1, 4).tolist()
        scores = np.asarray(dets.scores, dtype=np.float64).reshape(-1).tolist()
        class_ids = np.asarray(dets.class_ids).reshape(-1).astype(np.int64).tolist()
        for box, score, cid in zip(boxes, scores, class_ids, strict=True):
            label = label_of(cid, names)
            self._detections.append(
                (wall_time, source, frame_seq, label, cid, score, box[0], box[1], box[2], box[3])
            )
        cap = BUFFER_CAP_BATCHES * self.cfg.commit_max_rows
        if len(self._detections) > cap:
            excess = len(self._detections) - cap
            del self._detections[:excess]
            self.dropped_detections += excess

    # -- committing --------------------------------------------------------------------------

    def commit_due(self, now: float) -> int:
        """Commit if commit_interval_s passed since the last commit (`now` = time.monotonic())
        or commit_max_rows rows are buffered; returns rows written (0 when not due)."""
        rows = self.buffered_rows
        if rows == 0:
            return 0
        interval_passed = now - self._last_commit >= self.cfg.commit_interval_s
        # After a failed commit, wait a full interval before retrying even when the buffer is full.
        full = rows >= self.cfg.commit_max_rows and not self._retrying
        if interval_passed or full:
            return self.commit()
        return 0

    def commit(self) -> int:
        """Write everything buffered in one transaction; returns rows written."""
        if self.buffered_rows == 0:
            self._last_commit = time.monotonic()
            return 0
        inserts = [e for e in self._pending.values() if not e.stored]
        updates = [e for e in self._pending.values() if e.stored]
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                self._write(inserts, updates)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            self.failed_commits += 1
            self._retrying = True
            self._last_commit = time.monotonic()  # retry after one interval, not every frame
            log.error(
                "store.commit_failed",
                path=str(self.path),
                error=str(exc),
                buffered=self.buffered_rows,
            )
            raise describe(self.path, exc) from None
        for event in inserts:
            event.stored = True
        rows = len(inserts) + len(updates) + len(self._detections) + len(self._system)
        self.committed_events += len(inserts)
        self.updated_events += len(updates)
        self.committed_detections += len(self._detections)
        self.committed_system_events += len(self._system)
        self.rows_committed += rows
        self.commits += 1
        self._retrying = False
        self.last_commit_wall = time.time()
        self._last_commit = time.monotonic()
        self._pending.clear()
        self._detections.clear()
        self._system.clear()
        return rows

    def _write(self, inserts: list[OpenEvent], updates: list[OpenEvent]) -> None:
        """Execute the batch's statements inside the caller's open transaction."""
        conn = self._conn
        if inserts:
            conn.executemany(_INSERT_EVENT, map(_insert_row, inserts))
        if updates:
            conn.executemany(_UPDATE_EVENT, map(_update_row, updates))
        if self._detections:
            conn.executemany(_INSERT_DETECTION, self._detections)
        if self._system:
            conn.executemany(_INSERT_SYSTEM, self._system)

    # -- maintenance ---------------------------------------------------------------------------

    def prune(self, now_wall: float) -> int:
        """Retention by age, then by size (see `edged.store.retention`); returns rows deleted."""
        try:
            deleted = retention.prune(self._conn, self.path, self.cfg, now_wall)
        except sqlite3.Error as exc:
            log.error("store.prune_failed", path=str(self.path), error=str(exc))
            raise describe(self.path, exc) from None
        self.pruned_rows += deleted
        return deleted

    def stats(self) -> dict[str, int | float | None]:
        """Counters for the status line / status file."""
        return {
            "committed_events": self.committed_events,
            "updated_events": self.updated_events,
            "committed_detections": self.committed_detections,
            "committed_system_events": self.committed_system_events,
            "rows_committed": self.rows_committed,
            "commits": self.commits,
            "failed_commits": self.failed_commits,
            "dropped_detections": self.dropped_detections,
            "pruned_rows": self.pruned_rows,
            "buffered_rows": self.buffered_rows,
            "open_events": self.open_events,
            "last_commit_wall": self.last_commit_wall,
            "db_bytes": file_bytes(self.path),
        }

    def close(self) -> None:
        """Commit what is buffered, then close (the last close checkpoints the WAL away)."""
        try:
            if self.buffered_rows:
                self.commit()
        finally:
            try:
                self._conn.close()
            except sqlite3.Error as exc:
                log.warning("store.close_failed", path=str(self.path), error=str(exc))
        log.info("store.closed", path=str(self.path), rows_committed=self.rows_committed)

    def __enter__(self) -> EventStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _insert_row(e: OpenEvent) -> tuple[object, ...]:
    return (e.uid, e.source, e.label, e.class_id, e.first_seen, e.last_seen, e.best_score,
            *e.best_box, e.hits, e.frame_first, e.frame_last)  # fmt: skip


def _update_row(e: OpenEvent) -> tuple[object, ...]:
    return (e.last_seen, e.best_score, *e.best_box, e.hits, e.frame_last, e.uid)

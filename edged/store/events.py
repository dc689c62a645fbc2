"""EventStore: the sink worker's write side of the SQLite database.

Frames go through the track rule in memory (details in `edged.store.tracks`): one event per
(source, track_id). A tracked detection on an inferred frame creates its track's event or
extends it (last_seen, frame_last, hits, best score/box); predicted frames (the tracker's
Kalman boxes on skipped frames) never create or change an event. An event closes (dropped from
memory, its row stays) once its track goes unobserved for longer than event_gap_s.

The resulting rows are buffered (`edged.store.batch`) and written in batches, ONE transaction
(one fsync'd commit) per batch (`edged.store.commit`, which also recovers from a full or
locked database). The file never outgrows store.max_db_mb (`edged.store.capacity`).

Raw detections are the only rows ever dropped from the buffer (see `edged.store.batch`); events
and system events are kept until they are committed.

Upstream sync (`edged.store.outbox`): every event write queues the event in the outbox in the
same transaction, and the store marks an event ended when it closes: its track unseen for
event_gap_s (by frame time; by the clock when no frame has come for that long, e.g. the camera
is down), its id reused, or the store closing. Opening the store ends whatever an earlier
process left open: nothing can extend those events any more. With snapshots on, an ended
event gets its JPEG's path (`edged.store.snapshots`) in the same transaction.

Not thread-safe: one EventStore per process, used from one thread.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

import structlog

from edged.config import StoreConfig
from edged.store import capacity, outbox, retention
from edged.store.batch import Batch
from edged.store.capacity import SizeCap
from edged.store.commit import Committer
from edged.store.db import BUSY_TIMEOUT_MS, WRITE_BUSY_TIMEOUT_MS, describe, file_bytes, open_writer
from edged.store.faults import is_locked
from edged.store.schema import migrate
from edged.store.snapshots import SnapshotStore, collect_trash
from edged.store.tracks import OpenEvent, TrackEvents
from edged.vision.detections import Detections

log = structlog.get_logger()

BUFFER_CAP_BATCHES = 10
# close() is the buffer's last chance: wait longer for a lock held elsewhere than the loop does.
CLOSE_BUSY_TIMEOUT_MS = 2 * BUSY_TIMEOUT_MS


class EventStore(Committer):
    """Batched, crash-safe writer of events, detections and system events."""

    def __init__(
        self, path: Path, cfg: StoreConfig, conn: sqlite3.Connection, cap: SizeCap | None = None,
        snapshots: SnapshotStore | None = None,
    ) -> None:
        self.path = path
        self.cfg = cfg
        self.schema_version = 0
        self._conn = conn
        self.cap = cap if cap is not None else capacity.apply(conn, cfg.max_db_mb)
        self._tracks = TrackEvents(cfg.event_gap_s)
        self._batch = Batch(BUFFER_CAP_BATCHES * cfg.commit_max_rows)
        self.snapshots = snapshots
        self.ended_events = 0
        # The last frame: monotonic arrival and its wall time, for ending events by the clock.
        self._last_frame, self._last_wall = time.monotonic(), 0.0
        self._init_commit_state()

    @classmethod
    def open(cls, path: Path, cfg: StoreConfig,
             snapshots: SnapshotStore | None = None) -> EventStore:
        """Open or create the database at `path` and bring its schema up to date."""
        conn = open_writer(path)
        try:
            version = migrate(conn, path)
            # After the migrations, which must never fail for want of a page.
            cap = capacity.apply(conn, cfg.max_db_mb)
            left_open = outbox.end_all(conn, time.time())
            conn.execute(f"PRAGMA busy_timeout = {WRITE_BUSY_TIMEOUT_MS}")
        except sqlite3.Error as exc:
            conn.close()
            raise describe(path, exc) from None
        except BaseException:
            conn.close()
            raise
        store = cls(path, cfg, conn, cap, snapshots)
        store.schema_version = version
        size = file_bytes(path)
        log.info("store.opened", path=str(path), schema_version=version, bytes=size,
                 budget_bytes=cap.budget_bytes, events_ended=left_open)  # fmt: skip
        if cap.clamped:
            log.warning("store.over_cap", path=str(path), bytes=size, budget_bytes=cap.budget_bytes,
                        hint="retention shrinks it at the next prune")  # fmt: skip
        return store

    # -- buffering ---------------------------------------------------------------------------

    @property
    def open_events(self) -> int:
        return self._tracks.open_count

    @property
    def dropped_detections(self) -> int:
        return self._batch.dropped_detections

    def add_frame(
        self,
        source: str,
        frame_seq: int,
        wall_time: float,
        dets: Detections,
        names: Sequence[str],
        predicted: bool = False,
    ) -> None:
        """Apply the track rule to one frame's detections and buffer the resulting rows.

        `dets` must carry track_ids (ValueError otherwise, before anything is buffered);
        `predicted`: a frame the model skipped, whose boxes are the tracker's predictions.
        """
        before = self._tracks.open_events() if self._tracks.open_count else []
        touched = self._tracks.observe(source, frame_seq, wall_time, dets, names, predicted)
        self._last_frame, self._last_wall = time.monotonic(), wall_time
        if before:
            self._end_closed(before)
        for event in touched:
            self._batch.add_event(event)
        if self.cfg.record_detections and len(dets):
            self._batch.add_detections(source, frame_seq, wall_time, dets, names, predicted)

    def commit_due(self, now: float) -> int:
        """Committer.commit_due; first, with no frame for event_gap_s (source down, inference
        paused), the open events end by the clock, continuing the frames' wall time."""
        idle = now - self._last_frame
        if self._tracks.open_count and idle > self.cfg.event_gap_s:
            before = self._tracks.open_events()
            self._tracks.expire(self._last_wall + idle)
            self._end_closed(before)
        return super().commit_due(now)

    def _end_closed(self, before: list[OpenEvent]) -> None:
        """Mark ended the events of `before` that are no longer open."""
        still_open = {event.uid for event in self._tracks.open_events()}
        for event in before:
            if event.uid not in still_open:
                self._end(event)

    def _end(self, event: OpenEvent) -> None:
        snapshot = None
        if self.snapshots is not None:
            snapshot = self.snapshots.claim(event.uid, event.source, event.track_id,
                                            event.first_seen)
        self._batch.add_ended(event.uid, snapshot)
        self.ended_events += 1

    # -- maintenance ---------------------------------------------------------------------------

    def prune(self, now_wall: float) -> int:
        """Retention by age, then by size (see `edged.store.retention`); returns rows deleted.

        A locked database defers it to the next call (logged); other failures raise."""
        try:
            deleted = retention.prune(self._conn, self.path, self.cfg, now_wall, self.cap)
            # The files of the events just pruned (queued by a trigger), and the size cap.
            if self.snapshots is not None:
                self.snapshots.collect(self._conn, self.cfg.retention_days, now_wall)
            else:
                collect_trash(self._conn)
            # A file that was over the cap had it clamped to its size; tighten it again.
            self.cap = capacity.apply(self._conn, self.cfg.max_db_mb)
        except sqlite3.Error as exc:
            if is_locked(exc):
                log.warning("store.prune_deferred", path=str(self.path), error=str(exc))
                return 0
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
            "locked_commits": self.locked_commits,
            "full_events": self.full_events,
            "dropped_detections": self.dropped_detections,
            "pruned_rows": self.pruned_rows,
            "buffered_rows": self.buffered_rows,
            "open_events": self.open_events,
            "last_commit_wall": self.last_commit_wall,
            "db_bytes": file_bytes(self.path),
            "cap_bytes": self.cap.budget_bytes,
        }

    def reconfigure(self, cfg: StoreConfig) -> None:
        """A config reload: new retention, size cap, batching and event_gap_s settings."""
        if cfg.path != self.cfg.path:
            raise ValueError("store.path cannot change on a live store; restart the sink")
        self.cfg = cfg
        self.cap = capacity.apply(self._conn, cfg.max_db_mb)
        self._batch.detections_cap = BUFFER_CAP_BATCHES * cfg.commit_max_rows
        self._tracks.event_gap_s = cfg.event_gap_s
        log.info("store.reconfigured", path=str(self.path), max_db_mb=cfg.max_db_mb,
                 retention_days=cfg.retention_days)  # fmt: skip

    def close(self) -> None:
        """End the open events, commit what is buffered, then close (the last close
        checkpoints the WAL away)."""
        for event in self._tracks.open_events():
            self._end(event)
        try:
            if self.buffered_rows:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute(f"PRAGMA busy_timeout = {CLOSE_BUSY_TIMEOUT_MS}")
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

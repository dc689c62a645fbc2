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

Not thread-safe: one EventStore per process, used from one thread.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import structlog

from edged.config import StoreConfig
from edged.store import capacity, retention
from edged.store.batch import Batch
from edged.store.capacity import SizeCap
from edged.store.commit import Committer
from edged.store.db import BUSY_TIMEOUT_MS, WRITE_BUSY_TIMEOUT_MS, describe, file_bytes, open_writer
from edged.store.faults import is_locked
from edged.store.schema import migrate
from edged.store.tracks import TrackEvents
from edged.vision.detections import Detections

log = structlog.get_logger()

BUFFER_CAP_BATCHES = 10
# close() is the buffer's last chance: wait longer for a lock held elsewhere than the loop does.
CLOSE_BUSY_TIMEOUT_MS = 2 * BUSY_TIMEOUT_MS


class EventStore(Committer):
    """Batched, crash-safe writer of events, detections and system events."""

    def __init__(
        self, path: Path, cfg: StoreConfig, conn: sqlite3.Connection, cap: SizeCap | None = None
    ) -> None:
        self.path = path
        self.cfg = cfg
        self.schema_version = 0
        self._conn = conn
        self.cap = cap if cap is not None else capacity.apply(conn, cfg.max_db_mb)
        self._tracks = TrackEvents(cfg.event_gap_s)
        self._batch = Batch(BUFFER_CAP_BATCHES * cfg.commit_max_rows)
        self._init_commit_state()

    @classmethod
    def open(cls, path: Path, cfg: StoreConfig) -> EventStore:
        """Open or create the database at `path` and bring its schema up to date."""
        conn = open_writer(path)
        try:
            version = migrate(conn, path)
            # After the migrations, which must never fail for want of a page.
            cap = capacity.apply(conn, cfg.max_db_mb)
            conn.execute(f"PRAGMA busy_timeout = {WRITE_BUSY_TIMEOUT_MS}")
        except sqlite3.Error as exc:
            conn.close()
            raise describe(path, exc) from None
        except BaseException:
            conn.close()
            raise
        store = cls(path, cfg, conn, cap)
        store.schema_version = version
        size = file_bytes(path)
        log.info("store.opened", path=str(path), schema_version=version, bytes=size,
                 budget_bytes=cap.budget_bytes)  # fmt: skip
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
        touched = self._tracks.observe(source, frame_seq, wall_time, dets, names, predicted)
        for event in touched:
            self._batch.add_event(event)
        if self.cfg.record_detections and len(dets):
            self._batch.add_detections(source, frame_seq, wall_time, dets, names, predicted)

    # -- maintenance ---------------------------------------------------------------------------

    def prune(self, now_wall: float) -> int:
        """Retention by age, then by size (see `edged.store.retention`); returns rows deleted.

        A locked database defers it to the next call (logged); other failures raise."""
        try:
            deleted = retention.prune(self._conn, self.path, self.cfg, now_wall, self.cap)
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
        """Commit what is buffered, then close (the last close checkpoints the WAL away)."""
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

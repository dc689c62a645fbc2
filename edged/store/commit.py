"""Committing the buffered batch, and recovering from storage faults on the way.

Storage faults never stop the caller and never corrupt the file (`edged.store.faults`):

* A failed commit is rolled back (SQLite guarantees the file holds the old state or the new,
  never a part) and the buffer kept; it is retried with exponential back-off (0.5 s doubling to
  30 s), which `commit_due` respects.
* Database full (the size cap of `edged.store.capacity`, or the disk): `store.full` is logged,
  the oldest rows are pruned to make room for the batch (`retention.make_room`), a system
  event records it and the commit is retried once. If it still does not fit, the older half of
  the buffered raw detections is dropped (they would be the next rows pruned anyway) and
  StoreError raised.
* Database locked by another connection: each attempt waits at most WRITE_BUSY_TIMEOUT_MS, so
  the sink loop keeps beating; `store.locked` is logged once per episode and `store.unlocked`
  (with how long it lasted) when a commit gets through. `commit_due` does not raise for a lock,
  `commit` does.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import structlog

from edged.config import StoreConfig
from edged.store import retention
from edged.store.batch import Batch
from edged.store.capacity import SizeCap
from edged.store.db import StoreError, describe, file_bytes, write_transaction
from edged.store.faults import Backoff, is_full, is_locked
from edged.store.tracks import OpenEvent

log = structlog.get_logger()


class Committer:
    """The commit half of EventStore (a mixin: EventStore sets up the attributes below)."""

    path: Path
    cfg: StoreConfig
    cap: SizeCap
    _conn: sqlite3.Connection
    _batch: Batch

    def _init_commit_state(self) -> None:
        self._last_commit = time.monotonic()
        self._backoff = Backoff()
        self._locked_since: float | None = None  # monotonic start of the lock episode
        self._attempt_started = 0.0  # its first attempt began waiting on the lock here
        self.committed_events = 0  # event rows inserted
        self.updated_events = 0  # event rows updated
        self.committed_detections = 0
        self.committed_system_events = 0
        self.rows_committed = 0  # all rows inserted or updated
        self.commits = 0  # transactions committed
        self.failed_commits = 0  # attempts that failed, whatever the reason
        self.locked_commits = 0  # ... of which: database locked
        self.full_events = 0  # commits that hit the size cap or a full disk
        self.pruned_rows = 0
        self.last_commit_wall: float | None = None

    @property
    def buffered_rows(self) -> int:
        return self._batch.rows

    @property
    def locked(self) -> bool:
        """The last commit attempt found the database locked by another connection."""
        return self._locked_since is not None

    def add_system_event(self, kind: str, **detail: object) -> None:
        """Buffer a system event (start, stop, error, restart, ...) stamped now."""
        text = json.dumps(detail, default=str, sort_keys=True, separators=(",", ":"))
        self._batch.add_system((time.time(), kind, text))

    def commit_due(self, now: float) -> int:
        """Commit if due (`now` = time.monotonic()); returns rows written (0 when not due).

        Due: commit_interval_s passed since the last commit or commit_max_rows rows are
        buffered; after a failure, once its back-off delay has passed instead. A locked
        database returns 0 (the store retries by itself); other failures raise StoreError.
        """
        rows = self.buffered_rows
        if rows == 0 or not self._backoff.ready(now):
            return 0
        if not self._backoff.active:
            interval_passed = now - self._last_commit >= self.cfg.commit_interval_s
            if not interval_passed and rows < self.cfg.commit_max_rows:
                return 0
        try:
            return self.commit()
        except StoreError:
            if self.locked:
                return 0  # warned once for the episode; retried after the back-off
            raise

    def commit(self) -> int:
        """Write everything buffered in one transaction; returns rows written.

        Raises StoreError when it fails (the buffer is kept for the next attempt)."""
        if self.buffered_rows == 0:
            self._last_commit = time.monotonic()
            return 0
        self._attempt_started = time.monotonic()
        try:
            inserts, updates = self._transaction()
        except sqlite3.Error as exc:
            if not is_full(exc):
                raise self._failed(exc) from None
            inserts, updates = self._commit_after_full(exc)
        return self._committed(inserts, updates)

    def _transaction(self) -> tuple[list[OpenEvent], list[OpenEvent]]:
        with write_transaction(self._conn) as conn:
            return self._batch.write(conn)

    def _commit_after_full(self, exc: sqlite3.Error) -> tuple[list[OpenEvent], list[OpenEvent]]:
        """Make room by pruning the oldest rows, then retry the commit once."""
        self.full_events += 1
        needed = self._batch.estimated_bytes()
        log.error("store.full", path=str(self.path), error=str(exc), buffered=self.buffered_rows,
                  needed_bytes=needed, cap_bytes=self.cap.db_bytes)  # fmt: skip
        try:
            pruned = retention.make_room(self._conn, self.path, self.cap, needed)
        except sqlite3.Error as prune_exc:
            raise self._failed(prune_exc) from None
        self.pruned_rows += pruned
        log.info("store.pruned", rows=pruned, reason="full", bytes=file_bytes(self.path))
        self.add_system_event("error", what="database full", pruned=pruned)
        try:
            return self._transaction()
        except sqlite3.Error as retry_exc:
            if is_full(retry_exc):
                # Bigger than all the room there is (a long lock or a tiny cap): the oldest
                # raw detections would be the next rows pruned anyway.
                dropped = self._batch.drop_oldest_detections(len(self._batch.detections) // 2)
                if dropped:
                    log.error("store.detections_dropped", count=dropped,
                              reason="the batch does not fit under the size cap")  # fmt: skip
            raise self._failed(retry_exc) from None

    def _failed(self, exc: sqlite3.Error) -> StoreError:
        """Count a failed attempt, schedule the retry, log; returns the error to raise."""
        now = time.monotonic()
        delay = self._backoff.failed(now)
        self.failed_commits += 1
        if is_locked(exc):
            self.locked_commits += 1
            if self._locked_since is None:
                self._locked_since = self._attempt_started
                log.warning("store.locked", path=str(self.path), error=str(exc),
                            buffered=self.buffered_rows, retry_in_s=delay)  # fmt: skip
            else:
                log.debug("store.still_locked", attempts=self._backoff.failures,
                          buffered=self.buffered_rows, retry_in_s=delay)  # fmt: skip
        else:
            self._locked_since = None
            log.error("store.commit_failed", path=str(self.path), error=str(exc),
                      buffered=self.buffered_rows, retry_in_s=delay)  # fmt: skip
        return describe(self.path, exc)

    def _committed(self, inserts: list[OpenEvent], updates: list[OpenEvent]) -> int:
        now = time.monotonic()
        if self._backoff.active:
            attempts = self._backoff.failures + 1
            lasted = self._backoff.succeeded(now)
            if self._locked_since is not None:
                waited = round(now - self._locked_since, 3)
                log.info("store.unlocked", path=str(self.path), waited_s=waited, attempts=attempts)
                self._locked_since = None
            else:
                log.info("store.recovered", path=str(self.path), after_s=round(lasted, 3),
                         attempts=attempts)  # fmt: skip
        for event in inserts:
            event.stored = True
        batch = self._batch
        rows = len(inserts) + len(updates) + len(batch.detections) + len(batch.system)
        self.committed_events += len(inserts)
        self.updated_events += len(updates)
        self.committed_detections += len(batch.detections)
        self.committed_system_events += len(batch.system)
        self.rows_committed += rows
        self.commits += 1
        self.last_commit_wall = time.time()
        self._last_commit = now
        batch.clear()
        return rows

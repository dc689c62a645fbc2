"""Retention: delete rows by age, then by size, and give the space back to the filesystem.

1. Age: rows older than `retention_days` go (events by last_seen, detections and system events
   by ts).
2. Size: when the file plus its WAL exceed `max_db_mb`, the oldest events and detections go
   (by time: everything up to a cutoff estimated from how much must be freed, repeated until
   the live data fits in `SIZE_TARGET` of the limit, so pruning does not rerun at every call).
   System events are kept unless nothing else is left to delete.
3. Reclaim: `PRAGMA incremental_vacuum` (the file is created with auto_vacuum=INCREMENTAL)
   moves free pages to the end, and `PRAGMA wal_checkpoint(TRUNCATE)` copies the WAL into the
   file, truncates the file to its new page count and empties the WAL. A file that was created
   without incremental auto-vacuum is converted once with a full VACUUM.

Every delete runs in chunks of `CHUNK_ROWS`, one transaction each, so the write lock is never
held for long and the WAL stays small.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import structlog

from edged.config import StoreConfig
from edged.store.db import file_bytes

log = structlog.get_logger()

MIB = 1024 * 1024
DAY_S = 86_400.0
CHUNK_ROWS = 5000
SIZE_TARGET = 0.9  # prune down to this fraction of max_db_mb
MAX_SIZE_ROUNDS = 200

# (table, time column) pairs; the first two are pruned for size, system_events only last.
_DATA_TABLES = (("events", "last_seen"), ("detections", "ts"))
_SYSTEM_TABLES = (("system_events", "ts"),)


def prune(conn: sqlite3.Connection, path: Path, cfg: StoreConfig, now_wall: float) -> int:
    """Age then size retention; returns rows deleted. Must not run inside a transaction."""
    cutoff = now_wall - cfg.retention_days * DAY_S
    by_age = sum(
        delete_before(conn, table, col, cutoff) for table, col in (*_DATA_TABLES, *_SYSTEM_TABLES)
    )
    if by_age:
        log.info("store.pruned", rows=by_age, reason="age", cutoff=cutoff)
        reclaim(conn, path)
    limit = int(cfg.max_db_mb * MIB)
    by_size = 0
    if file_bytes(path) > limit:
        by_size = prune_size(conn, path, limit)
    return by_age + by_size


def delete_before(conn: sqlite3.Connection, table: str, column: str, cutoff: float) -> int:
    """Delete rows whose `column` is before cutoff, in chunked transactions."""
    return _delete_chunked(conn, table, column, cutoff, inclusive=False)


def prune_size(conn: sqlite3.Connection, path: Path, limit: int) -> int:
    """Delete the oldest data until the live data fits SIZE_TARGET * limit, then reclaim."""
    before = file_bytes(path)
    reclaim(conn, path)  # free pages left by earlier deletes may already be enough
    if file_bytes(path) <= limit:
        return 0
    target = int(limit * SIZE_TARGET)
    deleted = 0
    for _ in range(MAX_SIZE_ROUNDS):
        used = live_bytes(conn)
        if used <= target:
            break
        tables = _DATA_TABLES if _span(conn, _DATA_TABLES) else _SYSTEM_TABLES
        span = _span(conn, tables)
        if span is None:
            break  # nothing left to delete
        oldest, newest = span
        # Assume rows spread evenly in time; at least a 2 % step so every round makes progress.
        fraction = max((used - target) / used, 0.02)
        cutoff = oldest + fraction * (newest - oldest)
        round_rows = sum(
            _delete_chunked(conn, table, col, cutoff, inclusive=True) for table, col in tables
        )
        if round_rows == 0:
            break
        deleted += round_rows
    reclaim(conn, path)
    after = file_bytes(path)
    log.info(
        "store.pruned",
        rows=deleted,
        reason="size",
        bytes_before=before,
        bytes_after=after,
        limit=limit,
    )
    if after > limit:
        log.warning("store.still_over_size", bytes=after, limit=limit)
    return deleted


def reclaim(conn: sqlite3.Connection, path: Path) -> None:
    """Return free pages to the filesystem and empty the WAL."""
    if int(conn.execute("PRAGMA auto_vacuum").fetchone()[0]) == 2:
        # executescript steps the pragma to the end; execute() would free a single page.
        conn.executescript("PRAGMA incremental_vacuum;")
    else:
        log.info("store.vacuum_full", path=str(path), reason="enable incremental auto_vacuum")
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        conn.execute("VACUUM")
    busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    if busy:
        log.info("store.checkpoint_busy", path=str(path))


def live_bytes(conn: sqlite3.Connection) -> int:
    """Bytes in pages that hold data (the file size once free pages are reclaimed)."""
    page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
    pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
    free = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
    return (pages - free) * page_size


def _span(
    conn: sqlite3.Connection, tables: tuple[tuple[str, str], ...]
) -> tuple[float, float] | None:
    lows: list[float] = []
    highs: list[float] = []
    for table, col in tables:
        low, high = conn.execute(f"SELECT min({col}), max({col}) FROM {table}").fetchone()
        if low is not None:
            lows.append(float(low))
            highs.append(float(high))
    if not lows:
        return None
    return min(lows), max(highs)


def _delete_chunked(
    conn: sqlite3.Connection, table: str, column: str, cutoff: float, *, inclusive: bool
) -> int:
    op = "<=" if inclusive else "<"
    statement = (
        f"DELETE FROM {table} WHERE id IN"
        f" (SELECT id FROM {table} WHERE {column} {op} ? ORDER BY {column} LIMIT {CHUNK_ROWS})"
    )
    total = 0
    while True:
        conn.execute("BEGIN IMMEDIATE")
        try:
            count = conn.execute(statement, (cutoff,)).rowcount
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        total += max(count, 0)
        if count < CHUNK_ROWS:
            return total

"""Retention: delete rows by age, then by size, and give the space back to the filesystem.

1. Age: rows older than `retention_days` go (events by last_seen, detections and system events
   by ts).
2. Size: when the live data passes `SIZE_HIGH` of the size cap (`edged.store.capacity`: the
   database file's share of `max_db_mb`) or the file plus its WAL exceed `max_db_mb`, the
   oldest events and detections go (by time: everything up to a cutoff estimated from how much
   must be freed, repeated until the live data fits in `SIZE_TARGET` of the cap, so pruning
   does not rerun at every call). System events are kept unless nothing else is left.
3. Reclaim: `PRAGMA incremental_vacuum` (the file is created with auto_vacuum=INCREMENTAL)
   moves free pages to the end, and `PRAGMA wal_checkpoint(TRUNCATE)` copies the WAL into the
   file, truncates the file to its new page count and empties the WAL. A file that was created
   without incremental auto-vacuum is converted once with a full VACUUM.

The periodic prune keeps the file below its cap; when writes outrun it, a commit hits the cap
(SQLITE_FULL) and the writer calls `make_room`, which deletes the oldest rows the same way.

Every delete runs in chunks of `CHUNK_ROWS`, one transaction each, so the write lock is never
held for long and the WAL stays small.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import structlog

from edged.config import StoreConfig
from edged.store.capacity import SizeCap, page_count
from edged.store.db import file_bytes, write_transaction

log = structlog.get_logger()

DAY_S = 86_400.0
CHUNK_ROWS = 5000
SIZE_HIGH = 0.95  # the periodic prune starts above this fraction of the cap ...
SIZE_TARGET = 0.85  # ... and deletes down to this fraction
FULL_FREE = 0.15  # on SQLITE_FULL, free this fraction of the data (at least the pending batch)
MAX_SIZE_ROUNDS = 200
MAX_PAGES = 4_294_967_294  # SQLite's largest max_page_count

# (table, time column) pairs; the first two are pruned for size, system_events only last.
_DATA_TABLES = (("events", "last_seen"), ("detections", "ts"))
_SYSTEM_TABLES = (("system_events", "ts"),)


def prune(
    conn: sqlite3.Connection, path: Path, cfg: StoreConfig, now_wall: float, cap: SizeCap
) -> int:
    """Age then size retention; returns rows deleted. Must not run inside a transaction."""
    cutoff = now_wall - cfg.retention_days * DAY_S
    by_age = sum(
        delete_before(conn, table, col, cutoff) for table, col in (*_DATA_TABLES, *_SYSTEM_TABLES)
    )
    if by_age:
        log.info("store.pruned", rows=by_age, reason="age", cutoff=cutoff)
        reclaim(conn, path)
    by_size = 0
    if live_bytes(conn) > SIZE_HIGH * cap.db_bytes or file_bytes(path) > cap.budget_bytes:
        by_size = prune_size(conn, path, cap)
    return by_age + by_size


def delete_before(conn: sqlite3.Connection, table: str, column: str, cutoff: float) -> int:
    """Delete rows whose `column` is before cutoff, in chunked transactions."""
    return _delete_chunked(conn, table, column, cutoff, inclusive=False)


def prune_size(conn: sqlite3.Connection, path: Path, cap: SizeCap) -> int:
    """Delete the oldest data until the live data fits SIZE_TARGET of the cap, then reclaim."""
    before = file_bytes(path)
    reclaim(conn, path)  # an overgrown WAL or free pages may be all there is
    deleted = 0
    if live_bytes(conn) > SIZE_HIGH * cap.db_bytes:
        deleted = prune_to(conn, int(cap.db_bytes * SIZE_TARGET))
        reclaim(conn, path)
    after = file_bytes(path)
    if deleted or after != before:
        log.info(
            "store.pruned",
            rows=deleted,
            reason="size",
            bytes_before=before,
            bytes_after=after,
            limit=cap.budget_bytes,
        )
    if after > cap.budget_bytes:
        log.warning("store.still_over_size", bytes=after, limit=cap.budget_bytes)
    return deleted


def make_room(conn: sqlite3.Connection, path: Path, cap: SizeCap, needed_bytes: int) -> int:
    """After SQLITE_FULL: delete the oldest rows so that `needed_bytes` (the pending batch), and
    at least FULL_FREE of the data, fit; returns rows deleted. Must not run in a transaction."""
    # Well under the cap: the disk itself is full (at the cap, freed pages are reused in place
    # and shrinking the file would only cost writes).
    disk_full = page_count(conn) + needed_bytes // cap.page_size < cap.effective_pages
    if disk_full:
        # Copying the WAL into the file and truncating it may free enough for the deletes.
        _best_effort(conn, path, "PRAGMA wal_checkpoint(TRUNCATE)")
    used = live_bytes(conn)
    deleted = prune_to(conn, used - max(needed_bytes, int(FULL_FREE * used)))
    if disk_full:
        # Hand the freed pages back to the filesystem: the WAL needs room for the retry.
        _best_effort(conn, path, "PRAGMA incremental_vacuum")
        _best_effort(conn, path, "PRAGMA wal_checkpoint(TRUNCATE)")
    return deleted


def _best_effort(conn: sqlite3.Connection, path: Path, pragma: str) -> None:
    """Run a space-saving pragma that may itself fail for want of space; a failure is logged
    and changes nothing (SQLite keeps the file consistent)."""
    try:
        # executescript steps the pragma to its end (incremental_vacuum frees one page per step).
        conn.executescript(f"{pragma};")
    except sqlite3.Error as exc:
        log.warning("store.reclaim_failed", path=str(path), pragma=pragma, error=str(exc))


def prune_to(conn: sqlite3.Connection, target_bytes: int) -> int:
    """Delete the oldest data (system events only once no data is left) until the live data
    fits `target_bytes`; returns rows deleted."""
    deleted = 0
    for _ in range(MAX_SIZE_ROUNDS):
        used = live_bytes(conn)
        if used <= target_bytes:
            break
        tables = _DATA_TABLES if _span(conn, _DATA_TABLES) else _SYSTEM_TABLES
        span = _span(conn, tables)
        if span is None:
            break  # nothing left to delete
        oldest, newest = span
        # Assume rows spread evenly in time; at least a 2 % step so every round makes progress.
        fraction = max((used - max(target_bytes, 0)) / used, 0.02)
        cutoff = oldest + fraction * (newest - oldest)
        round_rows = sum(
            _delete_chunked(conn, table, col, cutoff, inclusive=True) for table, col in tables
        )
        if round_rows == 0:
            break
        deleted += round_rows
    return deleted


def reclaim(conn: sqlite3.Connection, path: Path) -> None:
    """Return free pages to the filesystem and empty the WAL."""
    if int(conn.execute("PRAGMA auto_vacuum").fetchone()[0]) == 2:
        # executescript steps the pragma to the end; execute() would free a single page.
        conn.executescript("PRAGMA incremental_vacuum;")
    else:
        log.info("store.vacuum_full", path=str(path), reason="enable incremental auto_vacuum")
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        # The rewrite adds pointer-map pages, so it may need a few more pages than the size
        # cap allows; lift the cap for this one-off, then restore it.
        cap_pages = int(conn.execute("PRAGMA max_page_count").fetchone()[0])
        conn.execute(f"PRAGMA max_page_count = {MAX_PAGES}")
        try:
            conn.execute("VACUUM")
        finally:
            conn.execute(f"PRAGMA max_page_count = {cap_pages}")
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
        with write_transaction(conn):
            count = conn.execute(statement, (cutoff,)).rowcount
        total += max(count, 0)
        if count < CHUNK_ROWS:
            return total

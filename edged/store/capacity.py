"""The hard size cap: the database never outgrows `store.max_db_mb` (an SD card never fills
because of us).

The budget B = max_db_mb MiB is split in two:

* the WAL: checkpointed (copied into the database file and rewound) once it holds `wal_pages`
  pages (`PRAGMA wal_autocheckpoint`), and truncated back to that size after a checkpoint
  (`PRAGMA journal_size_limit`). A single transaction larger than that still goes into the WAL
  whole, so the WAL may briefly exceed its share by one batch.
* the database file: `PRAGMA max_page_count` = B / page_size - wal_pages. SQLite will not grow
  the file past it: the write fails with SQLITE_FULL ("database or disk is full"), exactly the
  error a full disk gives, and the writer handles both the same way (prune, retry).

max_page_count is a per-connection setting, not stored in the file, so the writer sets it on
its connection (`apply`) right after the migrations (a migration must never fail for want of a
page: it would stop the sink at startup). SQLite never sets it below the file's current page
count: a file already larger than the cap (max_db_mb was lowered) keeps its size until
retention shrinks it, and the writer applies the cap again after every prune.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

MIB = 1024 * 1024
WAL_SHARE = 8  # the WAL gets 1/8 of the budget ...
MIN_WAL_PAGES = 16  # ... but at least this many pages (a checkpoint per commit below that) ...
MAX_WAL_PAGES = 1000  # ... and at most SQLite's default autocheckpoint (4 MiB of 4 KiB pages).
# The empty schema takes ~15 pages; a smaller cap could not hold even one batch.
MIN_DB_PAGES = 32


@dataclass(frozen=True)
class SizeCap:
    """The cap in force on one connection."""

    budget_bytes: int  # max_db_mb: database file + WAL
    page_size: int
    db_pages: int  # max_page_count asked for
    wal_pages: int  # wal_autocheckpoint
    effective_pages: int  # max_page_count SQLite applied: > db_pages while the file is larger

    @property
    def db_bytes(self) -> int:
        """The most the database file may hold once retention got it under the cap."""
        return self.db_pages * self.page_size

    @property
    def clamped(self) -> bool:
        """The file was already larger than the cap, so the cap is its current size for now."""
        return self.effective_pages > self.db_pages


def plan(budget_bytes: int, page_size: int) -> tuple[int, int]:
    """(database pages, WAL pages) for a budget in bytes."""
    pages = budget_bytes // page_size
    wal = min(max(pages // WAL_SHARE, MIN_WAL_PAGES), MAX_WAL_PAGES)
    return max(pages - wal, MIN_DB_PAGES), wal


def apply(conn: sqlite3.Connection, max_db_mb: float) -> SizeCap:
    """Set max_page_count and the WAL limits on `conn`; returns the cap in force."""
    page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
    budget = int(max_db_mb * MIB)
    db_pages, wal_pages = plan(budget, page_size)
    effective = int(conn.execute(f"PRAGMA max_page_count = {db_pages}").fetchone()[0])
    conn.execute(f"PRAGMA wal_autocheckpoint = {wal_pages}")
    conn.execute(f"PRAGMA journal_size_limit = {wal_pages * page_size}")
    return SizeCap(budget, page_size, db_pages, wal_pages, effective)


def page_count(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA page_count").fetchone()[0])

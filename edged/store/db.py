"""SQLite connection setup shared by the writer (EventStore) and the read side (queries).

Writer connections run in autocommit mode (`isolation_level=None`): every transaction is an
explicit `BEGIN IMMEDIATE ... COMMIT`, so one batch is exactly one commit and nothing is ever
committed implicitly by the sqlite3 module.

Durability: `journal_mode=WAL` + `synchronous=FULL` means a transaction is on stable storage
when COMMIT returns (the WAL is fsynced at every commit), and a power cut at any point leaves
either the old or the new state; an incomplete transaction in the WAL is ignored on recovery.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

# Opening and migrating (before the sink's loop starts) and the read side wait this long for a
# lock held by another connection.
BUSY_TIMEOUT_MS = 5000
# The writer's steady-state wait, set once the store is open: short, so a lock held elsewhere
# blocks the sink loop (and its heartbeat) for at most this long per attempt; the store then
# retries with back-off (`edged.store.faults`).
WRITE_BUSY_TIMEOUT_MS = 500
# After a checkpoint the WAL file is truncated back to at most this size (until the writer
# applies its size cap, `edged.store.capacity`, which sets a limit from store.max_db_mb).
JOURNAL_SIZE_LIMIT = 8 * 1024 * 1024


class StoreError(Exception):
    """The store cannot be used; str() is one line naming the path and the fix."""


@contextlib.contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """`BEGIN IMMEDIATE` ... `COMMIT`; on any error ROLLBACK (unless SQLite already did, as
    it may on SQLITE_FULL) and re-raise. One call = one transaction = one fsync'd commit."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def open_writer(path: Path) -> sqlite3.Connection:
    """Open (creating if needed) the database for writing, with the durability pragmas."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(
            f"{path}: cannot create directory {path.parent} ({exc.strerror}); "
            "create it or point store.path elsewhere"
        ) from None
    fresh = not path.exists() or path.stat().st_size == 0
    try:
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    except sqlite3.Error as exc:
        raise describe(path, exc) from None
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if conn.execute("PRAGMA page_count").fetchone()[0] == 0:
            # Only possible before the first table exists: lets prune() shrink the file.
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        if _foreign(conn):
            raise StoreError(
                f"{path}: holds tables but no edged schema version, so it is not an edged "
                "database; move it aside or point store.path elsewhere"
            )
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(
                f"{path}: cannot switch to WAL journal mode (got {mode!r}); "
                "put store.path on a local filesystem"
            )
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
    except sqlite3.Error as exc:
        conn.close()
        raise describe(path, exc) from None
    except StoreError:
        conn.close()
        raise
    if fresh:
        fsync_dir(path.parent)
    return conn


def _foreign(conn: sqlite3.Connection) -> bool:
    """True for a database some other program made (checked before we change anything)."""
    if conn.execute("PRAGMA user_version").fetchone()[0] != 0:
        return False
    names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    return bool(names) and "schema_version" not in names


def open_reader(path: Path) -> sqlite3.Connection:
    """Open read-only (`mode=ro` URI): never creates, migrates or blocks the daemon's writes."""
    if not path.exists():
        raise StoreError(
            f"{path}: no such database; check store.path (the daemon creates it on first start)"
        )
    uri = f"{path.resolve().as_uri()}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA query_only = ON")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as exc:
        raise describe(path, exc) from None
    conn.row_factory = sqlite3.Row
    return conn


def describe(path: Path, exc: sqlite3.Error) -> StoreError:
    """Turn an sqlite3 error into a one-line StoreError that says what to do."""
    return StoreError(f"{path}: {exc}; {fix_for(exc)}")


def fix_for(exc: sqlite3.Error) -> str:
    """What an operator should do about an sqlite3 error, in a few words."""
    low = str(exc).lower()
    if "not a database" in low or "malformed" in low or "encrypted" in low:
        fix = "not a usable SQLite file; move it aside (a new one is created)"
    elif "readonly" in low or "read-only" in low:
        fix = "it is read-only; give the edged user write access to the file and its directory"
    elif "unable to open" in low:
        fix = "check that it is a file in a directory the edged user can write"
    elif "disk is full" in low or "disk i/o" in low:
        # Commits recover by pruning; this reaches the operator only when that did not help.
        fix = (
            "the size cap (store.max_db_mb) or the disk is full, or the disk is failing; "
            "free disk space or raise store.max_db_mb"
        )
    elif "locked" in low or "busy" in low:
        fix = "another process holds a write lock; stop the other edged instance"
    else:
        fix = "check the file, or move it aside"
    return fix


def fsync_dir(directory: Path) -> None:
    """Make a newly created file's directory entry durable (ignored where unsupported)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def file_bytes(path: Path) -> int:
    """Size on disk of the database plus its WAL."""
    total = 0
    for candidate in (path, Path(f"{path}-wal")):
        with contextlib.suppress(FileNotFoundError):
            total += candidate.stat().st_size
    return total

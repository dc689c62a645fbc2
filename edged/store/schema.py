"""Schema versions and forward migrations.

Versioning: `PRAGMA user_version` (a field in the file header) holds the schema version the
file is at; the `schema_version` table keeps one row per applied migration (version, name,
applied_at) for humans. Both are written inside the migration's own transaction, so a file is
never half-migrated: a crash during a migration leaves it at the previous version. When the two
disagree (e.g. a file built by hand that set only one of them) the higher one wins.

Opening a file runs every pending migration in order, each in its own `BEGIN IMMEDIATE`
transaction (so two processes opening the same file at once cannot both apply one). A file newer
than `LATEST_VERSION` raises StoreError: this code would not know its columns.

To add a migration, append `Migration(N + 1, "what it does", sql(...))` (or any function taking
the connection) to MIGRATIONS, e.g.:

    Migration(4, "zones", sql(
        "CREATE TABLE zones (name TEXT PRIMARY KEY, polygon TEXT NOT NULL)",
        "ALTER TABLE events ADD COLUMN zone TEXT",
    ))

Never edit a migration that has shipped; write a new one. A migration must not COMMIT itself
and must not use `executescript` (it commits the open transaction).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from edged.store.db import StoreError, describe, fix_for

log = structlog.get_logger()


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    apply: Callable[[sqlite3.Connection], None]


def sql(*statements: str) -> Callable[[sqlite3.Connection], None]:
    """A migration made of plain SQL statements, run one by one in the open transaction."""

    def run(conn: sqlite3.Connection) -> None:
        for statement in statements:
            conn.execute(statement)

    return run


# v1: the minimum a first release needed: events and system events.
V1_SQL: tuple[str, ...] = (
    "CREATE TABLE schema_version ("
    " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)",
    "CREATE TABLE events ("
    " id INTEGER PRIMARY KEY,"
    " uid TEXT NOT NULL UNIQUE,"
    " source TEXT NOT NULL,"
    " label TEXT NOT NULL,"
    " class_id INTEGER NOT NULL,"
    " first_seen REAL NOT NULL,"
    " last_seen REAL NOT NULL,"
    " best_score REAL NOT NULL,"
    " x1 REAL NOT NULL, y1 REAL NOT NULL, x2 REAL NOT NULL, y2 REAL NOT NULL,"
    " hits INTEGER NOT NULL DEFAULT 1,"
    " frame_first INTEGER NOT NULL,"
    " frame_last INTEGER NOT NULL)",
    "CREATE TABLE system_events ("
    " id INTEGER PRIMARY KEY,"
    " ts REAL NOT NULL,"
    " kind TEXT NOT NULL,"
    " detail TEXT NOT NULL DEFAULT '{}')",
)

# v2: raw detections (optional, off by default) and the indexes retention and queries use.
V2_SQL: tuple[str, ...] = (
    "CREATE TABLE detections ("
    " id INTEGER PRIMARY KEY,"
    " ts REAL NOT NULL,"
    " source TEXT NOT NULL,"
    " frame_seq INTEGER NOT NULL,"
    " label TEXT NOT NULL,"
    " class_id INTEGER NOT NULL,"
    " score REAL NOT NULL,"
    " x1 REAL NOT NULL, y1 REAL NOT NULL, x2 REAL NOT NULL, y2 REAL NOT NULL)",
    "CREATE INDEX detections_ts ON detections (ts)",
    "CREATE INDEX events_last_seen ON events (last_seen)",
    "CREATE INDEX events_first_seen ON events (first_seen)",
    "CREATE INDEX system_events_ts ON system_events (ts)",
)

# v3: events become one row per tracker track (`edged.store.tracks`). ADD COLUMN only rewrites
# the schema, not the rows, so it is instant on a full database; rows written by v1/v2 keep
# track_id NULL (they came from the interim IoU rule and have no track). The index serves
# look-ups of one track's event(s) by source. `predicted` marks raw detections of skipped
# frames (tracker predictions, not observations); older rows were all observations, hence 0.
V3_SQL: tuple[str, ...] = (
    "ALTER TABLE events ADD COLUMN track_id INTEGER",
    "CREATE INDEX events_source_track ON events (source, track_id)",
    "ALTER TABLE detections ADD COLUMN track_id INTEGER",
    "ALTER TABLE detections ADD COLUMN predicted INTEGER NOT NULL DEFAULT 0",
)

# v4: upstream sync and snapshots. `outbox` holds one row per event (`edged.store.outbox`):
# `version` counts the writes of the event row (bumped in the same transaction), `ended` is set
# once the event can no longer change, `sent_version` is the version the broker acknowledged.
# The row id is the event id, and ON DELETE CASCADE (open_writer turns foreign keys on) makes
# retention drop a pruned event's outbox row with it, so the backlog is bounded by retention.
# The partial index holds only what is still to send. `events.snapshot` is the path of the
# event's JPEG (`edged.store.snapshots`); the trigger queues the file of a deleted event for
# removal, whichever path deleted it (age, size, make_room).
V4_SQL: tuple[str, ...] = (
    "CREATE TABLE outbox ("
    " event_id INTEGER PRIMARY KEY REFERENCES events (id) ON DELETE CASCADE,"
    " version INTEGER NOT NULL DEFAULT 1,"
    " ended INTEGER NOT NULL DEFAULT 0,"
    " sent_version INTEGER NOT NULL DEFAULT 0,"
    " changed_at REAL NOT NULL,"
    " sent_at REAL)",
    "CREATE INDEX outbox_pending ON outbox (event_id) WHERE sent_version < version",
    "ALTER TABLE events ADD COLUMN snapshot TEXT",
    "CREATE TABLE snapshot_trash (path TEXT NOT NULL)",
    "CREATE TRIGGER events_snapshot_trash AFTER DELETE ON events"
    " WHEN old.snapshot IS NOT NULL"
    " BEGIN INSERT INTO snapshot_trash (path) VALUES (old.snapshot); END",
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "events and system_events", sql(*V1_SQL)),
    Migration(2, "detections table, time indexes", sql(*V2_SQL)),
    Migration(3, "tracks", sql(*V3_SQL)),
    Migration(4, "outbox and snapshots", sql(*V4_SQL)),
)
LATEST_VERSION = MIGRATIONS[-1].version


def _check_order(migrations: Sequence[Migration]) -> None:
    expected = list(range(1, len(migrations) + 1))
    if [m.version for m in migrations] != expected:
        raise RuntimeError("MIGRATIONS must be numbered 1, 2, 3, ... in order")


_check_order(MIGRATIONS)


def schema_version(conn: sqlite3.Connection) -> int:
    """The file's schema version: max of `user_version` and the `schema_version` table."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    has_table = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).fetchone()
    if has_table:
        row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
        if row[0] is not None:
            version = max(version, int(row[0]))
    return version


def migrate(
    conn: sqlite3.Connection, path: Path, migrations: Sequence[Migration] = MIGRATIONS
) -> int:
    """Apply pending migrations in order, one transaction each; returns the final version."""
    latest = migrations[-1].version
    try:
        version = schema_version(conn)
    except sqlite3.Error as exc:
        raise describe(path, exc) from None
    if version > latest:
        raise StoreError(
            f"{path}: database schema v{version} is newer than this edged understands "
            f"(v{latest}); upgrade edged or move the file aside"
        )
    for migration in migrations:
        if migration.version <= version:
            continue
        version = _apply(conn, path, migration)
    return version


def _apply(conn: sqlite3.Connection, path: Path, migration: Migration) -> int:
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Re-read under the write lock: another process may have migrated meanwhile.
            current = schema_version(conn)
            if current >= migration.version:
                conn.execute("ROLLBACK")
                return current
            migration.apply(conn)
            conn.execute(
                "INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)",
                (migration.version, migration.name, time.time()),
            )
            conn.execute(f"PRAGMA user_version = {int(migration.version)}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    except sqlite3.Error as exc:
        raise StoreError(
            f"{path}: migration to schema v{migration.version} ({migration.name}) failed: "
            f"{exc} (the file stays at v{migration.version - 1}); {fix_for(exc)}"
        ) from None
    log.info("store.migrated", path=str(path), version=migration.version, name=migration.name)
    return migration.version

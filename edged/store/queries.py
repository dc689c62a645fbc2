"""Read side for the CLI (`edged events`, `edged status`).

Every function opens the database READ-ONLY (`file:...?mode=ro` URI, `query_only`): it never
creates, migrates or writes the file, and in WAL mode a reader never blocks the daemon's writer
(nor is blocked by it). Each call opens and closes its own connection.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from edged.store.db import StoreError, describe, file_bytes, open_reader
from edged.store.schema import schema_version

EVENT_COLUMNS = (
    "id",
    "uid",
    "source",
    "label",
    "class_id",
    "first_seen",
    "last_seen",
    "best_score",
    "x1",
    "y1",
    "x2",
    "y2",
    "hits",
    "frame_first",
    "frame_last",
    "track_id",  # schema v3; NULL on rows written before it (and on files not yet migrated)
    "snapshot",  # schema v4: path of the event's JPEG, NULL when it has none
)
SYSTEM_EVENT_COLUMNS = ("id", "ts", "kind", "detail")
TABLES = ("events", "detections", "system_events")

_UNITS_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0, "w": 604_800.0}
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$", re.IGNORECASE)


def parse_since(text: str, now: float | None = None) -> float:
    """'30s' / '10m' / '2h' / '3d' / '1w' ago, or an ISO-8601 time, as unix seconds.

    ISO times without a UTC offset are local time; 'Z' means UTC. Raises ValueError.
    """
    value = text.strip()
    match = _DURATION.match(value)
    if match:
        amount = float(match.group(1)) * _UNITS_S[match.group(2).lower()]
        return (time.time() if now is None else now) - amount
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"invalid time {text!r}: use a duration such as 30s, 10m, 2h, 3d, 1w or an "
            "ISO-8601 time such as 2024-05-01T12:00:00Z"
        ) from None
    return moment.timestamp()


def query_events(
    path: Path,
    since: float | None = None,
    label: str | None = None,
    source: str | None = None,
    limit: int = 1000,
    until: float | None = None,
    min_score: float | None = None,
) -> list[dict[str, Any]]:
    """Events newest first (by first_seen); `since` keeps events last seen at or after it,
    `until` those first seen before it (together: events that overlap the interval),
    `min_score` those whose best score reaches it.

    Every row has every EVENT_COLUMNS key; track_id is None on events from before the tracker.
    """
    where, args = _filters(("last_seen >= ?", since), ("first_seen < ?", until),
                           ("label = ?", label), ("source = ?", source),
                           ("best_score >= ?", min_score))
    rest = f"{where} ORDER BY first_seen DESC, id DESC LIMIT ?"
    return _select(path, "events", EVENT_COLUMNS, rest, (*args, max(int(limit), 0)))


def event_snapshot(path: Path, ref: str) -> dict[str, Any] | None:
    """The event with id or uid `ref` as {id, uid, snapshot}; None when there is no such event.
    `snapshot` is None when the event has no JPEG (snapshots off, or it was pruned)."""
    key = int(ref) if ref.isdigit() else -1
    rows = _select(path, "events", ("id", "uid", "snapshot"), " WHERE id = ? OR uid = ? LIMIT 1",
                   (key, ref))
    return rows[0] if rows else None


def query_system_events(
    path: Path, since: float | None = None, kind: str | None = None, limit: int = 1000
) -> list[dict[str, Any]]:
    """System events newest first; `detail` is the JSON text as stored."""
    where, args = _filters(("ts >= ?", since), ("kind = ?", kind))
    rest = f"{where} ORDER BY ts DESC, id DESC LIMIT ?"
    return _select(path, "system_events", SYSTEM_EVENT_COLUMNS, rest, (*args, max(int(limit), 0)))


def count_rows(path: Path) -> dict[str, int]:
    """Row count of each table (0 for a table this file's schema does not have yet)."""
    conn = open_reader(path)
    try:
        present = _tables(conn)
        return {
            table: int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
            if table in present
            else 0
            for table in TABLES
        }
    except sqlite3.Error as exc:
        raise describe(path, exc) from None
    finally:
        conn.close()


def db_info(path: Path) -> dict[str, Any]:
    """Schema version, size on disk (file + WAL) and row counts, for `edged status`."""
    conn = open_reader(path)
    try:
        version = schema_version(conn)
    except sqlite3.Error as exc:
        raise describe(path, exc) from None
    finally:
        conn.close()
    return {
        "path": str(path),
        "schema_version": version,
        "bytes": file_bytes(path),
        "rows": count_rows(path),
    }


def _filters(*pairs: tuple[str, object]) -> tuple[str, list[object]]:
    clauses: list[str] = []
    args: list[object] = []
    for clause, value in pairs:
        if value is not None:
            clauses.append(clause)
            args.append(value)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), args


def _select(
    path: Path, table: str, columns: Sequence[str], rest: str, args: tuple[object, ...]
) -> list[dict[str, Any]]:
    """SELECT `columns` FROM `table` `rest`; a column the file's schema lacks reads as NULL.

    The read side never migrates, so the CLI may meet a file an older daemon wrote (e.g. right
    after an upgrade, before the daemon restarted): it still answers, with NULLs."""
    conn = open_reader(path)
    try:
        if table not in _tables(conn):
            raise StoreError(
                f"{path}: no {table} table; this is not an edged database or it was never "
                "started (run the daemon once)"
            )
        present = {str(row[1]) for row in conn.execute(f"PRAGMA table_info({table})")}
        select = ", ".join(c if c in present else f"NULL AS {c}" for c in columns)
        return [dict(row) for row in conn.execute(f"SELECT {select} FROM {table}{rest}", args)]
    except sqlite3.Error as exc:
        raise describe(path, exc) from None
    finally:
        conn.close()


def _tables(conn: sqlite3.Connection) -> set[str]:
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {str(row[0]) for row in rows}

"""The upstream outbox: which events still have to be sent, and what the broker acknowledged.

One row per event (schema v4, `outbox.event_id` = `events.id`):

* The sink writes it in the SAME transaction as the event row (`edged.store.batch`): the insert
  creates it with version 1, every update of the event bumps `version`, and the end of the
  event (its track unseen for event_gap_s, the sink stopping, or a new sink process finding it
  left open by the previous one) sets `ended = 1` and bumps `version` once more. After that
  the event never changes again.
* The uplink worker (`edged.uplink.sync`) reads pending rows (`sent_version < version`;
  `send: final` also needs `ended = 1`), publishes them, and only once the broker acknowledged
  a message sets `sent_version` to the version it sent. A row the sink changed meanwhile stays
  pending, so the newer state goes out too (`send: updates`).
* Retention deletes a pruned event's row with it (ON DELETE CASCADE): the backlog never
  outlives `retention_days` or the size cap.

Everything is in SQLite, so the backlog survives restarts and power cuts. The uplink is a
second writer of the file: its transactions are a single small UPDATE, and they wait at most
WRITE_BUSY_TIMEOUT_MS for the sink's lock (a locked file is retried at the next pass).
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edged.store.db import WRITE_BUSY_TIMEOUT_MS, StoreError, describe, write_transaction
from edged.store.faults import is_locked
from edged.store.schema import schema_version

OUTBOX_VERSION = 4  # the schema version that created the outbox

_PENDING = (
    "SELECT o.event_id, o.version, o.ended, e.uid, e.source, e.label, e.class_id, e.track_id,"
    " e.first_seen, e.last_seen, e.best_score, e.x1, e.y1, e.x2, e.y2, e.hits, e.snapshot"
    " FROM outbox AS o JOIN events AS e ON e.id = o.event_id"
    " WHERE o.sent_version < o.version{ended} ORDER BY o.event_id LIMIT ?"
)
_MARK_SENT = (
    "UPDATE outbox SET sent_version = max(sent_version, ?), sent_at = ? WHERE event_id = ?"
)
_END_ALL = (
    "UPDATE outbox SET ended = 1, version = version + 1, changed_at = ? WHERE ended = 0"
)


@dataclass(frozen=True)
class OutboxRow:
    """A pending event: the outbox state plus the event's stored columns."""

    event_id: int
    version: int
    ended: bool
    event: dict[str, Any]


def end_all(conn: sqlite3.Connection, now_wall: float) -> int:
    """Mark every event not yet ended as ended, in its own transaction; returns how many.

    For a sink that has just started: it holds no open event, so none of the events in the
    file can change again (a track seen again starts a new event)."""
    with write_transaction(conn):
        count = conn.execute(_END_ALL, (now_wall,)).rowcount
    return max(count, 0)


class Outbox:
    """The uplink's connection to the database: read pending rows, record acknowledgements."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn = conn

    @classmethod
    def open(cls, path: Path) -> Outbox | None:
        """Open the file the sink created; None while it does not exist or is older than v4
        (the sink creates and migrates it; the uplink never does)."""
        if not path.exists():
            return None
        try:
            # mode=rw: never create the file (a typo in store.path must not leave one behind).
            conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True,
                                   isolation_level=None, timeout=WRITE_BUSY_TIMEOUT_MS / 1000)
        except sqlite3.Error as exc:
            raise describe(path, exc) from None
        try:
            conn.execute(f"PRAGMA busy_timeout = {WRITE_BUSY_TIMEOUT_MS}")
            # Per connection, not stored in the file: an acknowledgement must be as durable
            # as an event, or a power cut would send the event again.
            conn.execute("PRAGMA synchronous = FULL")
            if schema_version(conn) < OUTBOX_VERSION:
                conn.close()
                return None
        except sqlite3.Error as exc:
            conn.close()
            if is_locked(exc):
                return None  # the sink is migrating it right now
            raise describe(path, exc) from None
        conn.row_factory = sqlite3.Row
        return cls(path, conn)

    def pending(self, limit: int, final_only: bool,
                exclude: Collection[int] = ()) -> list[OutboxRow]:
        """Up to `limit` rows to send, oldest event first, skipping the ids in `exclude`
        (messages already handed to the broker and not yet acknowledged)."""
        sql = _PENDING.format(ended=" AND o.ended = 1" if final_only else "")
        try:
            rows = self._conn.execute(sql, (limit + len(exclude),)).fetchall()
        except sqlite3.Error as exc:
            raise describe(self.path, exc) from None
        out = [_row(r) for r in rows if r["event_id"] not in exclude]
        return out[:limit]

    def mark_sent(self, acked: Iterable[tuple[int, int]], now_wall: float | None = None) -> int:
        """Record acknowledged (event_id, version) pairs in one transaction; returns rows.

        Raises StoreError (e.g. locked for longer than the busy timeout): the caller keeps
        the pairs and tries again; nothing is half-recorded."""
        stamp = time.time() if now_wall is None else now_wall
        params = [(version, stamp, event_id) for event_id, version in acked]
        if not params:
            return 0
        conn = self._conn
        try:
            with write_transaction(conn):
                conn.executemany(_MARK_SENT, params)
        except sqlite3.Error as exc:
            if is_locked(exc):  # the sink's commit, most likely: brief, and retried
                raise StoreError(f"{self.path}: locked by another writer ({exc})") from None
            raise describe(self.path, exc) from None
        return len(params)

    def backlog(self) -> int:
        """Events whose latest state the broker has not acknowledged (open ones included)."""
        try:
            row = self._conn.execute(
                "SELECT count(*) FROM outbox WHERE sent_version < version").fetchone()
        except sqlite3.Error as exc:
            raise describe(self.path, exc) from None
        return int(row[0])

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._conn.close()


def _row(r: sqlite3.Row) -> OutboxRow:
    event = {
        "uid": r["uid"], "source": r["source"], "label": r["label"], "class_id": r["class_id"],
        "track_id": r["track_id"], "first_seen": r["first_seen"], "last_seen": r["last_seen"],
        "best_score": r["best_score"], "box": [r["x1"], r["y1"], r["x2"], r["y2"]],
        "hits": r["hits"], "snapshot": r["snapshot"],
    }
    return OutboxRow(int(r["event_id"]), int(r["version"]), bool(r["ended"]), event)


"""System events written by the supervisor (restarts, stalls, reloads) beside the sink.

The supervisor never blocks on the database: rows wait in memory until the sink has opened
(and migrated) the file, then go in one short transaction; a failure keeps them for later.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import structlog

log = structlog.get_logger()


class SystemLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.pending: list[tuple[float, str, str]] = []
        self._failing = False

    def add(self, kind: str, **detail: object) -> None:
        self.pending.append((time.time(), kind, json.dumps(detail, default=str)))

    def flush(self) -> int:
        """Write what is pending; returns rows written (0 on failure, rows kept)."""
        if not self.pending:
            return 0
        try:
            conn = sqlite3.connect(self.path, timeout=0.5)
            try:
                with conn:
                    conn.executemany(
                        "INSERT INTO system_events (ts, kind, detail) VALUES (?, ?, ?)",
                        self.pending)
            finally:
                conn.close()
        except sqlite3.Error as exc:
            if not self._failing:
                log.warning("system_log.deferred", error=str(exc), pending=len(self.pending))
            self._failing = True
            return 0
        written, self.pending, self._failing = len(self.pending), [], False
        return written

"""Storage faults the writer recovers from by itself: a full database and a locked one.

* Full (SQLITE_FULL, "database or disk is full"): the size cap (`PRAGMA max_page_count`, see
  `edged.store.capacity`) was reached, or the filesystem is out of space. Same error, same cure:
  prune the oldest rows, then retry (`EventStore.commit`).
* Locked (SQLITE_BUSY / SQLITE_LOCKED, "database is locked"): another connection holds the write
  lock for longer than the writer's busy_timeout. Transient: keep the buffer and retry with
  exponential back-off (`Backoff`), so a long lock costs a few short waits instead of one
  blocked sink loop per commit interval.
"""

from __future__ import annotations

import sqlite3

# Primary result codes (the low byte of an extended code such as SQLITE_BUSY_SNAPSHOT).
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
_SQLITE_FULL = 13

BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0


def _primary_code(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else int(code) & 0xFF


def is_full(exc: sqlite3.Error) -> bool:
    """The size cap or the disk is full."""
    code = _primary_code(exc)
    if code is not None:
        return code == _SQLITE_FULL
    return "is full" in str(exc).lower()


def is_locked(exc: sqlite3.Error) -> bool:
    """Another connection holds the lock we need (after our busy_timeout ran out)."""
    code = _primary_code(exc)
    if code is not None:
        return code in (_SQLITE_BUSY, _SQLITE_LOCKED)
    low = str(exc).lower()
    return "locked" in low or "busy" in low


class Backoff:
    """Exponential back-off between retries of a failing commit (times are time.monotonic()).

    The delay after the n-th consecutive failure is first_s * 2**(n-1), capped at max_s; one
    success ends the episode. `since` is when the episode's first failure happened.
    """

    def __init__(self, first_s: float = BACKOFF_FIRST_S, max_s: float = BACKOFF_MAX_S) -> None:
        self.first_s = first_s
        self.max_s = max_s
        self.failures = 0
        self.since: float | None = None
        self.next_at = 0.0

    @property
    def active(self) -> bool:
        return self.failures > 0

    def ready(self, now: float) -> bool:
        return now >= self.next_at

    def failed(self, now: float) -> float:
        """Record a failure at `now`; returns the delay until the next attempt."""
        delay = min(self.first_s * 2.0**self.failures, self.max_s)
        self.failures += 1
        if self.since is None:
            self.since = now
        self.next_at = now + delay
        return delay

    def succeeded(self, now: float) -> float:
        """End the episode; returns how long it lasted (0 when nothing had failed)."""
        lasted = 0.0 if self.since is None else now - self.since
        self.failures = 0
        self.since = None
        self.next_at = 0.0
        return lasted

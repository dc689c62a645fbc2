"""Store-and-forward: pending outbox rows -> MQTT QoS 1 -> marked sent once acknowledged.

One pass (`step`): record what the broker acknowledged since the last pass; when connected,
read up to `batch_size` pending rows (oldest event first) that are not already in flight,
publish them all, wait up to `ack_timeout_s` for their PUBACKs, and record the acknowledged
ones in SQLite in one transaction. A message not acknowledged in time stays in flight: paho
delivers it (again, after a reconnect) and its late acknowledgement is recorded by a later
pass, so the loop itself never publishes a row twice. Rows acknowledged but not yet recorded
(the database was locked) are kept in memory and are not sent again either.

What "pending" means is `sync.send` (see `edged.store.outbox`): `final` sends each event once,
after it ended; `updates` sends every stored change, the last one with `ended: true`.

Duplicates are possible only around a failure: the broker took a message but its PUBACK was
lost with the connection, or the uplink process died between the PUBACK and the SQLite
commit. Event `uid`s are stable, so a consumer de-duplicates on them (keep the highest
`version`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

import structlog

from edged.config import SyncConfig
from edged.store.db import StoreError
from edged.store.outbox import Outbox
from edged.uplink.messages import event_payload

log = structlog.get_logger()


class Link(Protocol):
    @property
    def connected(self) -> bool: ...

    def publish(self, topic: str, payload: bytes | str, qos: int = 1,
                retain: bool = False) -> int | None: ...

    def take_acked(self) -> set[int]: ...

    def wait(self, mids: set[int], timeout_s: float) -> bool: ...


class SyncLoop:
    def __init__(self, outbox: Outbox, link: Link, cfg: SyncConfig, topic: str, device: str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.outbox, self.link, self.cfg = outbox, link, cfg
        self.topic, self.device, self.clock = topic, device, clock
        self.inflight: dict[int, tuple[int, int]] = {}  # message id -> (event_id, version)
        self.acked: dict[int, int] = {}  # event_id -> version: acknowledged, not yet recorded
        self.published = 0  # event messages handed to the broker
        self.sent = 0  # ... acknowledged and recorded
        self._record_failing = False

    @property
    def final_only(self) -> bool:
        return self.cfg.send == "final"

    def step(self) -> int:
        """One pass; returns how many rows it published (0: nothing to do, or no link).

        Raises StoreError when the outbox cannot be read (the caller retries later)."""
        self._settle()
        if not self.link.connected:
            return 0
        room = self.cfg.batch_size - len(self.inflight)
        rows = []
        if room > 0:
            busy = {event_id for event_id, _ in self.inflight.values()} | self.acked.keys()
            rows = self.outbox.pending(room, self.final_only, busy)
        published = 0
        for row in rows:
            mid = self.link.publish(self.topic, event_payload(row, self.device), qos=1)
            if mid is None:
                break  # the link dropped; the rest waits for the next pass
            self.inflight[mid] = (row.event_id, row.version)
            published += 1
        self.published += published
        if self.inflight:
            self.link.wait(set(self.inflight), self.cfg.ack_timeout_s)
            self._settle()
        return published

    def flush(self, timeout_s: float, beat: Callable[[], None] = lambda: None) -> int:
        """At a clean stop: send what is pending for up to timeout_s while connected;
        returns rows recorded as sent meanwhile."""
        before = self.sent
        deadline = self.clock() + timeout_s
        while self.clock() < deadline and self.link.connected:
            beat()
            try:
                published = self.step()
            except StoreError as exc:
                log.error("uplink.flush_failed", error=str(exc))
                break
            if not published and not self.inflight and not self.acked:
                break
        return self.sent - before

    def _settle(self) -> None:
        """Move acknowledged messages out of flight and record them in SQLite."""
        for mid in self.link.take_acked():
            entry = self.inflight.pop(mid, None)
            if entry is not None:  # others: status or stats messages
                event_id, version = entry
                self.acked[event_id] = max(self.acked.get(event_id, 0), version)
        if not self.acked:
            return
        try:
            recorded = self.outbox.mark_sent(self.acked.items())
        except StoreError as exc:
            if not self._record_failing:
                log.warning("uplink.record_failed", error=str(exc), acked=len(self.acked),
                            hint="kept in memory, retried next pass; not sent again")
            self._record_failing = True
            return
        if self._record_failing:
            log.info("uplink.record_recovered", recorded=recorded)
        self._record_failing = False
        self.sent += recorded
        self.acked.clear()

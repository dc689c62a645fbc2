"""The sync loop on a real outbox, with an in-process link whose acknowledgements the test
controls (the real broker is in tests/integration/test_mqtt_sync.py)."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from edged.config import StoreConfig, SyncConfig
from edged.store import EventStore
from edged.store.outbox import Outbox
from edged.uplink.sync import SyncLoop
from edged.vision.detections import Detections

NAMES = ["person", "bicycle", "car"]
T0 = 1_700_000_000.0
TOPIC = "edged/dev/events"


class FakeLink:
    """Connected or not; publishes are recorded; acknowledgements come when the test says."""

    def __init__(self, auto_ack: bool = True) -> None:
        self.connected = True
        self.auto_ack = auto_ack
        self.sent: list[tuple[int, str, dict[str, object]]] = []
        self._acked: set[int] = set()
        self._next = 0

    def publish(self, topic: str, payload: bytes | str, qos: int = 1,
                retain: bool = False) -> int | None:
        if not self.connected:
            return None
        self._next += 1
        self.sent.append((self._next, topic, json.loads(payload)))
        if self.auto_ack:
            self._acked.add(self._next)
        return self._next

    def ack_all(self) -> None:
        self._acked |= {mid for mid, _, _ in self.sent}

    def take_acked(self) -> set[int]:
        acked, self._acked = self._acked, set()
        return acked

    def wait(self, mids: set[int], timeout_s: float) -> bool:
        return mids <= self._acked

    def uids(self) -> list[str]:
        return [str(doc["uid"]) for _, _, doc in self.sent]


def people(track_ids: list[int]) -> Detections:
    n = len(track_ids)
    boxes = np.array([[100.0 * t, 10, 100.0 * t + 50, 120] for t in track_ids], np.float32)
    return Detections(boxes.reshape(-1, 4), np.full(n, 0.8, np.float32), np.zeros(n, np.int32),
                      np.array(track_ids, np.int32))


@pytest.fixture()
def store(tmp_path: Path) -> EventStore:
    path = tmp_path / "events.db"
    return EventStore.open(path, StoreConfig(path=path, event_gap_s=1.0))


def sync_for(store: EventStore, link: FakeLink, **cfg: object) -> SyncLoop:
    outbox = Outbox.open(store.path)
    assert outbox is not None
    return SyncLoop(outbox, link, SyncConfig(**cfg), TOPIC, "dev")  # type: ignore[arg-type]


def run_until_idle(sync: SyncLoop, passes: int = 20) -> None:
    for _ in range(passes):
        if not sync.step() and not sync.inflight:
            return


def test_final_sends_each_ended_event_once_after_the_ack(store: EventStore) -> None:
    link = FakeLink()
    sync = sync_for(store, link)
    store.add_frame("cam", 1, T0, people([1, 2]), NAMES)
    store.commit()
    run_until_idle(sync)
    assert link.sent == []  # both still open: `final` waits for the end
    store.add_frame("cam", 2, T0 + 0.5, people([2]), NAMES)
    store.add_frame("cam", 3, T0 + 1.2, people([2]), NAMES)  # track 1 ended
    store.commit()
    run_until_idle(sync)
    store.close()  # ends track 2's event
    run_until_idle(sync)
    run_until_idle(sync)
    assert Counter(link.uids()).most_common(1)[0][1] == 1  # nothing twice
    assert len(link.sent) == 2 and sync.sent == 2 and sync.outbox.backlog() == 0
    _, topic, doc = link.sent[0]
    assert topic == TOPIC
    assert doc["ended"] is True and doc["label"] == "person" and doc["device"] == "dev"
    assert doc["box"] == [100.0, 10.0, 150.0, 120.0] and doc["first_seen"] == T0
    assert doc["track_id"] == 1 and doc["hits"] == 1 and doc["snapshot"] is None


def test_nothing_is_recorded_sent_before_the_ack_and_nothing_is_sent_twice(
        store: EventStore) -> None:
    link = FakeLink(auto_ack=False)
    sync = sync_for(store, link, batch_size=10)
    store.add_frame("cam", 1, T0, people([1, 2, 3]), NAMES)
    store.close()
    sync.step()
    assert len(link.sent) == 3 and len(sync.inflight) == 3
    assert sync.outbox.backlog() == 3  # handed to the broker is not acknowledged
    for _ in range(5):
        sync.step()  # still in flight: not published again
    assert len(link.sent) == 3
    link.ack_all()
    sync.step()
    assert sync.sent == 3 and sync.outbox.backlog() == 0 and not sync.inflight


def test_batches_are_bounded_and_oldest_first(store: EventStore) -> None:
    link = FakeLink(auto_ack=False)
    sync = sync_for(store, link, batch_size=4)
    store.add_frame("cam", 1, T0, people(list(range(1, 11))), NAMES)
    store.close()
    sync.step()
    assert [doc["track_id"] for _, _, doc in link.sent] == [1, 2, 3, 4]
    sync.step()  # the batch is still in flight: no room
    assert len(link.sent) == 4
    link.ack_all()
    run_until_idle(sync)
    link.ack_all()
    run_until_idle(sync)
    link.ack_all()
    run_until_idle(sync)
    assert sorted(doc["track_id"] for _, _, doc in link.sent) == list(range(1, 11))
    assert sync.outbox.backlog() == 0


def test_disconnected_publishes_nothing_and_resumes(store: EventStore) -> None:
    link = FakeLink()
    link.connected = False
    sync = sync_for(store, link)
    store.add_frame("cam", 1, T0, people([1, 2]), NAMES)
    store.close()
    assert sync.step() == 0 and link.sent == []
    assert sync.outbox.backlog() == 2  # waiting in SQLite, not in memory
    link.connected = True
    run_until_idle(sync)
    assert len(link.sent) == 2 and sync.outbox.backlog() == 0


def test_a_locked_database_keeps_acks_in_memory_without_resending(store: EventStore) -> None:
    link = FakeLink()
    sync = sync_for(store, link)
    store.add_frame("cam", 1, T0, people([1]), NAMES)
    store.close()
    locker = sqlite3.connect(store.path, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    sync.step()
    assert len(link.sent) == 1 and sync.acked and sync.sent == 0
    sync.step()
    assert len(link.sent) == 1  # acknowledged, not recorded yet: never sent again
    locker.execute("ROLLBACK")
    locker.close()
    sync.step()
    assert sync.sent == 1 and not sync.acked and sync.outbox.backlog() == 0


def test_updates_sends_every_stored_change_with_a_growing_version(store: EventStore) -> None:
    link = FakeLink()
    sync = sync_for(store, link, send="updates")
    store.add_frame("cam", 1, T0, people([1]), NAMES)
    store.commit()
    run_until_idle(sync)
    store.add_frame("cam", 2, T0 + 0.3, people([1]), NAMES)
    store.commit()
    run_until_idle(sync)
    run_until_idle(sync)  # nothing changed: nothing sent
    store.close()
    run_until_idle(sync)
    docs = [doc for _, _, doc in link.sent]
    assert [(d["version"], d["ended"], d["hits"]) for d in docs] == [
        (1, False, 1), (2, False, 2), (3, True, 2)]
    assert len({d["uid"] for d in docs}) == 1 and sync.outbox.backlog() == 0


def test_a_restart_resumes_from_sqlite(store: EventStore) -> None:
    first = FakeLink(auto_ack=False)
    sync = sync_for(store, first)
    store.add_frame("cam", 1, T0, people([1, 2]), NAMES)
    store.close()
    sync.step()  # published, never acknowledged: the uplink process dies here
    sync.outbox.close()
    second = FakeLink()
    run_until_idle(sync_for(store, second))
    # The broker never acknowledged them, so they go again: this is the one case a consumer
    # can see a uid twice, and it de-duplicates on it.
    assert sorted(second.uids()) == sorted(first.uids())


def test_flush_sends_the_backlog_within_its_budget(store: EventStore) -> None:
    link = FakeLink()
    sync = sync_for(store, link, batch_size=3)
    store.add_frame("cam", 1, T0, people(list(range(1, 8))), NAMES)
    store.close()
    beats: list[int] = []
    assert sync.flush(5.0, lambda: beats.append(1)) == 7
    assert sync.outbox.backlog() == 0 and len(beats) >= 3
    link.connected = False
    assert sync.flush(5.0) == 0  # no link: returns at once

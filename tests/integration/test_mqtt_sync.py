"""Store-and-forward to a real Mosquitto broker: the whole daemon, the broker stopped while it
runs, both restarted, and every event in SQLite at the subscriber exactly once by uid."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import Daemon
from tests.integration.mqtt_broker import Broker, Subscriber, broker, duplicates

__all__ = ["broker"]  # the fixture, imported for pytest

DEVICE = "itest"
EVENTS, STATUS = f"edged/{DEVICE}/events", f"edged/{DEVICE}/status"


def outbox_state(db: Path) -> dict[str, tuple[int, int, int]]:
    """uid -> (version, ended, sent_version) for every queued event."""
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT e.uid, o.version, o.ended, o.sent_version FROM outbox o"
                            " JOIN events e ON e.id = o.event_id").fetchall()
    finally:
        conn.close()
    return {uid: (v, ended, sent) for uid, v, ended, sent in rows}


def unsent(db: Path) -> set[str]:
    return {uid for uid, (v, _, sent) in outbox_state(db).items() if sent < v}


@pytest.mark.slow
def test_events_reach_the_subscriber_exactly_once_across_broker_and_daemon_restarts(
    broker: Broker, pipeline_config: Callable[..., Path], daemons: list[Daemon], tmp_path: Path,
) -> None:
    db = tmp_path / "events.db"
    config = pipeline_config(
        model={"input_size": 320},  # the test is about sync, not accuracy: keep frames quick
        store={"event_gap_s": 0.5},
        mqtt={"enabled": True, "port": broker.port, "device": DEVICE, "stats_interval_s": 1},
        sync={"interval_s": 0.2, "reconnect_initial_s": 1, "reconnect_max_s": 2},
    )
    subscriber = Subscriber(broker.port, [EVENTS, STATUS])
    try:
        # 1. Run 1 sends while the broker is up ...
        first = Daemon(config, "--max-frames", "120")
        daemons.append(first)
        subscriber.wait_for(lambda: len(subscriber.on(EVENTS)) >= 3, 90, "the first events")
        # ... then the broker goes away while edged keeps detecting.
        broker.stop()
        down_at = time.monotonic()
        assert first.wait(120) == 0
        assert first.find("uplink.disconnected"), "the uplink never noticed the broker left"
        stranded = unsent(db)
        state = outbox_state(db)
        assert stranded, "no event was left for the outbox to carry over the outage"
        assert all(ended for _, ended, _ in state.values())  # the stop ended every event
        received_before = len(subscriber.on(EVENTS))

        # 2. edged starts again while the broker is still down, then the broker comes back.
        second = Daemon(config, "--max-frames", "40")
        daemons.append(second)
        second.wait_for(lambda: bool(second.find("uplink.ready")), 60, "the uplink to start")
        time.sleep(1.5)  # at least one refused connection: the uplink backs off, not crash
        broker.start()
        up_at = time.monotonic()
        second.wait_for(lambda: not (stranded & unsent(db)), 60, "the backlog to drain")
        drain_s = time.monotonic() - up_at
        assert second.wait(120) == 0
    except BaseException:
        subscriber.close()
        raise
    # 3. Every event in SQLite reached the subscriber exactly once by uid; nothing is left.
    state = outbox_state(db)
    subscriber.wait_for(lambda: set(state) <= {json.loads(p)["uid"] for p in subscriber.on(
        EVENTS)}, 20, "every stored event at the subscriber")
    time.sleep(1.0)  # a late duplicate would arrive now
    docs = [json.loads(p) for p in subscriber.on(EVENTS)]
    uids = [d["uid"] for d in docs]
    subscriber.close()
    assert duplicates(uids) == {}
    assert set(uids) == set(state)
    assert not unsent(db) and all(ended for _, ended, _ in state.values())
    conn = sqlite3.connect(db)
    stored = dict(conn.execute("SELECT uid, label FROM events").fetchall())
    conn.close()
    assert set(stored) == set(state)  # every event row was queued
    assert all(d["label"] == stored[d["uid"]] and d["ended"] for d in docs)
    # Availability: online while up, the retained last word is offline.
    statuses = [p.decode() for p in subscriber.on(STATUS)]
    assert "online" in statuses and statuses[-1] == "offline"
    print(f"\nmqtt sync: {len(state)} events stored, {len(uids)} received, duplicates 0; "
          f"{received_before} before the outage, {len(stranded)} carried over it "
          f"({time.monotonic() - down_at:.0f} s ago); backlog drained {drain_s:.2f} s after "
          f"the broker came back")


_WILL_CLIENT = """
import sys, time
from edged.config import MqttConfig, SyncConfig
from edged.uplink.messages import Topics
from edged.uplink.mqtt import MqttLink
topics = Topics.for_device("edged", "will")
link = MqttLink(MqttConfig(port=int(sys.argv[1])), SyncConfig(), topics, "edged-will")
link.start()
while not link.connected:
    time.sleep(0.05)
link.publish(topics.status, "online", retain=True)
print("up", flush=True)
time.sleep(60)
"""


def test_the_last_will_says_offline_when_edged_dies(broker: Broker, tmp_path: Path) -> None:
    status = "edged/will/status"
    subscriber = Subscriber(broker.port, [status], client_id="edged-test-will")
    proc = subprocess.Popen([sys.executable, "-c", _WILL_CLIENT, str(broker.port)],
                            stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        while proc.stdout.readline().strip() != b"up":  # skip its log lines
            assert proc.poll() is None, "the client died before connecting"
        subscriber.wait_for(lambda: subscriber.on(status) == [b"online"], 10, "online")
        proc.send_signal(signal.SIGKILL)  # no DISCONNECT: the broker publishes the will
        proc.wait(10)
        subscriber.wait_for(lambda: subscriber.on(status)[-1:] == [b"offline"], 10, "the will")
    finally:
        if proc.poll() is None:
            proc.kill()
        subscriber.close()
    # Retained: a client that subscribes later learns that edged is offline.
    late = Subscriber(broker.port, [status], client_id="edged-test-late")
    try:
        late.wait_for(lambda: late.on(status) == [b"offline"], 10, "the retained status")
    finally:
        late.close()
    assert Counter(subscriber.on(status))[b"offline"] == 1

"""Topics, payloads, Home Assistant discovery and the mqtt/sync/snapshots config sections."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from edged.config import Config, MqttConfig, SnapshotConfig, SyncConfig
from edged.store.outbox import OutboxRow
from edged.uplink.messages import (
    Topics,
    client_id,
    device_name,
    discovery_messages,
    event_payload,
)

BASE: dict[str, Any] = {"source": {"uri": "video.avi"}, "model": {"path": "m.onnx"}}


def test_topics_and_names() -> None:
    topics = Topics.for_device("site/edged/", "cam-box")
    assert topics == Topics("site/edged/cam-box/events", "site/edged/cam-box/status",
                            "site/edged/cam-box/stats")
    cfg = MqttConfig(device="pi5")
    assert device_name(cfg) == "pi5" and client_id(cfg, "pi5") == "edged-pi5"
    assert client_id(MqttConfig(client_id="x"), "pi5") == "x"
    host = device_name(MqttConfig())
    assert host and not set(host) & set("/+# ")


def test_event_payload_is_the_stored_event_with_its_sync_state() -> None:
    row = OutboxRow(7, 3, True, {
        "uid": "a" * 32, "source": "cam0", "label": "person", "class_id": 0, "track_id": 12,
        "first_seen": 1700000000.123456, "last_seen": 1700000004.5, "best_score": 0.876543,
        "box": [10.04, 20.06, 110.0, 220.55], "hits": 31, "snapshot": "/s/2024-01-01/a.jpg"})
    doc = json.loads(event_payload(row, "pi5"))
    assert doc == {
        "uid": "a" * 32, "device": "pi5", "source": "cam0", "label": "person", "class_id": 0,
        "track_id": 12, "first_seen": 1700000000.123, "last_seen": 1700000004.5,
        "duration_s": 4.377, "best_score": 0.8765, "box": [10.0, 20.1, 110.0, 220.6],
        "hits": 31, "snapshot": "/s/2024-01-01/a.jpg", "ended": True, "version": 3,
    }


def test_home_assistant_discovery() -> None:
    topics = Topics.for_device("edged", "pi5")
    messages = discovery_messages(MqttConfig(ha_prefix="ha"), "pi5", topics)
    by_topic = {topic: json.loads(payload) for topic, payload in messages}
    assert all(t.startswith("ha/sensor/edged_pi5/") and t.endswith("/config") for t in by_topic)
    last = by_topic["ha/sensor/edged_pi5/last_object/config"]
    assert last["state_topic"] == topics.events and last["json_attributes_topic"] == topics.events
    assert last["availability_topic"] == topics.status
    assert last["payload_not_available"] == "offline"
    fps = by_topic["ha/sensor/edged_pi5/fps/config"]
    assert fps["state_topic"] == topics.stats and fps["unit_of_measurement"] == "fps"
    unique = {doc["unique_id"] for doc in by_topic.values()}
    assert len(unique) == len(by_topic)  # HA needs distinct ids
    assert {doc["device"]["identifiers"][0] for doc in by_topic.values()} == {"edged_pi5"}


def test_defaults_are_off_and_safe() -> None:
    config = Config.model_validate(BASE)
    assert not config.mqtt.enabled and not config.snapshots.enabled
    assert config.sync.send == "final"
    assert str(config.snapshots.dir) == "/var/lib/edged/snapshots"


def test_the_password_is_masked_in_dumps_but_kept_for_the_client() -> None:
    config = Config.model_validate({**BASE, "mqtt": {"username": "u", "password": "s3cret"}})
    assert "s3cret" not in json.dumps(config.model_dump(mode="json"))
    assert config.mqtt.password is not None
    assert config.mqtt.password.get_secret_value() == "s3cret"


@pytest.mark.parametrize("section,values", [
    ("mqtt", {"device": "a/b"}),
    ("mqtt", {"topic_prefix": "edged/#"}),
    ("mqtt", {"port": 0}),
    ("mqtt", {"hots": "x"}),
    ("sync", {"send": "always"}),
    ("sync", {"reconnect_initial_s": 10, "reconnect_max_s": 5}),
    ("sync", {"batch_size": 0}),
    ("snapshots", {"style": "thumbnail"}),
    ("snapshots", {"jpeg_quality": 101}),
])
def test_invalid_values_are_refused(section: str, values: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Config.model_validate({**BASE, section: values})


def test_sections_are_frozen() -> None:
    for section, field in ((MqttConfig(), "enabled"), (SyncConfig(), "send"),
                           (SnapshotConfig(), "enabled")):
        with pytest.raises(ValidationError):
            setattr(section, field, True)

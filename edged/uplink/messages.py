"""MQTT topics and payloads: events, availability, stats and Home Assistant discovery.

Topics (prefix `mqtt.topic_prefix`, default `edged`; device `mqtt.device`, default the host
name):

* `<prefix>/<device>/events`: one JSON message per event (QoS 1, not retained), see
  `event_payload`.
* `<prefix>/<device>/status`: `online` / `offline` (QoS 1, retained; `offline` is also the
  last will, so a lost connection reads as offline).
* `<prefix>/<device>/stats`: pipeline figures every `mqtt.stats_interval_s` (retained).
* `<ha_prefix>/sensor/edged_<device>/<key>/config`: Home Assistant discovery (retained), only
  with `mqtt.ha_discovery`.
"""

from __future__ import annotations

import json
import re
import socket
from dataclasses import dataclass
from typing import Any

from edged import __version__
from edged.config import MqttConfig
from edged.store.outbox import OutboxRow

_UNSAFE = re.compile(r"[/+#\s]")


@dataclass(frozen=True)
class Topics:
    events: str
    status: str
    stats: str

    @classmethod
    def for_device(cls, prefix: str, device: str) -> Topics:
        base = f"{prefix.rstrip('/')}/{device}"
        return cls(f"{base}/events", f"{base}/status", f"{base}/stats")


def device_name(cfg: MqttConfig) -> str:
    """The configured device id, or the host name made safe for a topic level."""
    return cfg.device or _UNSAFE.sub("_", socket.gethostname()) or "edged"


def client_id(cfg: MqttConfig, device: str) -> str:
    return cfg.client_id or f"edged-{device}"


def _dumps(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=False).encode()


def event_payload(row: OutboxRow, device: str) -> bytes:
    """The event as a consumer sees it: stable `uid` to de-duplicate on, times in unix seconds,
    box in source-frame pixels (x1, y1, x2, y2), `version` growing with every stored change."""
    e = row.event
    return _dumps({
        "uid": e["uid"],
        "device": device,
        "source": e["source"],
        "label": e["label"],
        "class_id": e["class_id"],
        "track_id": e["track_id"],
        "first_seen": round(e["first_seen"], 3),
        "last_seen": round(e["last_seen"], 3),
        "duration_s": round(e["last_seen"] - e["first_seen"], 3),
        "best_score": round(e["best_score"], 4),
        "box": [round(float(v), 1) for v in e["box"]],
        "hits": e["hits"],
        "snapshot": e["snapshot"],
        "ended": row.ended,
        "version": row.version,
    })


def stats_payload(figures: dict[str, Any]) -> bytes:
    return _dumps(figures)


# key -> (name, state topic attribute, value template, unit, extra)
_SENSORS: dict[str, tuple[str, str, str, str | None]] = {
    "last_object": ("Last object", "events", "{{ value_json.label }}", None),
    "fps": ("Inference rate", "stats", "{{ value_json.fps }}", "fps"),
    "events_sent": ("Events sent", "stats", "{{ value_json.events_sent }}", None),
    "backlog": ("Outbox backlog", "stats", "{{ value_json.backlog }}", None),
    "thermal_mode": ("Thermal mode", "stats", "{{ value_json.thermal_mode }}", None),
}


def discovery_messages(cfg: MqttConfig, device: str,
                       topics: Topics) -> list[tuple[str, bytes]]:
    """Home Assistant MQTT discovery: (topic, retained payload) per sensor of this device."""
    node = f"edged_{device}"
    dev = {"identifiers": [node], "name": f"edged {device}", "manufacturer": "edged",
           "model": "edged object-detection daemon", "sw_version": __version__}
    out = []
    for key, (name, topic, template, unit) in _SENSORS.items():
        config: dict[str, Any] = {
            "name": name,
            "unique_id": f"{node}_{key}",
            "object_id": f"{node}_{key}",
            "state_topic": getattr(topics, topic),
            "value_template": template,
            "availability_topic": topics.status,
            "payload_available": "online",
            "payload_not_available": "offline",
            "device": dev,
        }
        if unit:
            config["unit_of_measurement"] = unit
            config["state_class"] = "measurement"
        if key == "last_object":
            # The whole event as attributes: uid, score, box, times, snapshot path.
            config["json_attributes_topic"] = topics.events
        out.append((f"{cfg.ha_prefix}/sensor/{node}/{key}/config", _dumps(config)))
    return out

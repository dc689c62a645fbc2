"""One paho-mqtt client: connection in paho's network thread, acknowledgements by message id.

paho's thread (loop_start) connects, reconnects with capped exponential back-off
(`sync.reconnect_initial_s` .. `reconnect_max_s`) and resends the QoS 1 messages still
unacknowledged after a reconnect (with the DUP flag). The worker's own loop only publishes,
reads which message ids the broker acknowledged (`on_publish` fires on PUBACK), and waits for
them with a timeout, so it never blocks on the network for long and keeps its heartbeat.

The last will is `offline` (retained) on the status topic; `announce` publishes `online`.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from edged.config import MqttConfig, SyncConfig
from edged.uplink.messages import Topics

log = structlog.get_logger()


class MqttLink:
    """The broker connection as the sync loop sees it: connected?, publish, acked ids."""

    def __init__(self, cfg: MqttConfig, sync: SyncConfig, topics: Topics, client_id: str) -> None:
        self.cfg, self.topics = cfg, topics
        self.connections = 0  # successful CONNACKs so far: a change means "announce again"
        self._acked: set[int] = set()
        self._cond = threading.Condition()
        self._down_reason: str | None = None  # the reason logged for the current outage
        # Callbacks run in paho's thread, which does not see this thread's context (proc=).
        self._log = log.bind(**structlog.contextvars.get_contextvars())
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                             clean_session=True, protocol=mqtt.MQTTv311)
        if cfg.username is not None:
            password = cfg.password.get_secret_value() if cfg.password else None
            client.username_pw_set(cfg.username, password)
        if cfg.tls:
            client.tls_set(ca_certs=str(cfg.ca_file) if cfg.ca_file else None)
        client.will_set(topics.status, "offline", qos=1, retain=True)
        client.reconnect_delay_set(sync.reconnect_initial_s, sync.reconnect_max_s)
        # A whole batch may be in flight at once; the outbox, not paho, is the queue.
        client.max_inflight_messages_set(sync.batch_size)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self.client = client

    def start(self) -> None:
        """Connect in the background; paho's thread retries until the broker answers."""
        self.client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s)
        self.client.loop_start()

    @property
    def connected(self) -> bool:
        return self.client.is_connected()

    def publish(self, topic: str, payload: bytes | str, qos: int = 1,
                retain: bool = False) -> int | None:
        """Hand a message to paho; its message id, or None when not connected (not queued)."""
        if not self.connected:
            return None
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        # NO_CONN: the link dropped just now; paho keeps a QoS 1 message and resends it.
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            log.warning("uplink.publish_failed", topic=topic, rc=mqtt.error_string(info.rc))
            return None
        return info.mid

    def take_acked(self) -> set[int]:
        """Message ids the broker acknowledged since the last call."""
        with self._cond:
            acked, self._acked = self._acked, set()
        return acked

    def wait(self, mids: set[int], timeout_s: float) -> bool:
        """Until every id in `mids` is acknowledged (True), or the timeout or a disconnect."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not mids <= self._acked:
                left = deadline - time.monotonic()
                if left <= 0 or not self.connected:
                    return False
                self._cond.wait(min(left, 0.1))
        return True

    def stop(self, timeout_s: float = 2.0) -> None:
        """Say `offline` (retained) while still connected, then disconnect and end the thread.

        A clean disconnect does not fire the last will, hence the explicit message."""
        if self.connected:
            mid = self.publish(self.topics.status, "offline", retain=True)
            if mid is not None:
                self.wait({mid}, timeout_s)
            self.client.disconnect()
        self.client.loop_stop()

    # -- paho's thread ---------------------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any,
                    reason: Any, properties: Any) -> None:
        if reason.is_failure:
            self._down(f"refused: {reason}")
            return
        self.connections += 1
        self._down_reason = None
        self._log.info("uplink.connected", host=self.cfg.host, port=self.cfg.port,
                 connections=self.connections)

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self._down("cannot connect")

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any,
                       reason: Any, properties: Any) -> None:
        with self._cond:
            self._cond.notify_all()  # waiters give up at once
        if reason.value != 0:
            self._down(f"connection lost: {reason}")

    def _down(self, reason: str) -> None:
        # Once per outage and reason: a broker that stays down must not flood the journal.
        if reason != self._down_reason:
            self._down_reason = reason
            self._log.warning("uplink.disconnected", host=self.cfg.host, port=self.cfg.port,
                        reason=reason, hint="retrying with back-off; events wait in the outbox")

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int,
                    reason: Any, properties: Any) -> None:
        with self._cond:
            self._acked.add(mid)
            self._cond.notify_all()

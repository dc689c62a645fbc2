"""Uplink worker (only with `mqtt.enabled`): the SQLite outbox -> MQTT, availability, stats.

A process of its own, so a broker that is down or a network that stalls never slows the sink,
and the watchdog restarts it like any other worker. Its loop stamps the heartbeat every pass;
every wait in it is bounded (PUBACKs: sync.ack_timeout_s; SQLite: the short write busy
timeout), and paho's own thread does the connecting, so DNS or TCP timeouts never block it.

mqtt and sync settings are read from the spawn arguments only: a change restarts this worker
(the reload channel carries the config as JSON, in which the broker password is masked).

Stopping: the supervisor stops the uplink after the sink, whose last commit ended every open
event, so a clean stop sends those final states too (`sync.flush_timeout_s`, while
connected); then `offline` is published (retained) and the connection closed.
"""

from __future__ import annotations

import time

import structlog

from edged.governor import LEVELS
from edged.ipc.control import ControlBlock, Counter, Slot
from edged.store.db import StoreError
from edged.store.outbox import Outbox
from edged.uplink.messages import (
    Topics,
    client_id,
    device_name,
    discovery_messages,
    stats_payload,
)
from edged.uplink.mqtt import MqttLink
from edged.uplink.sync import SyncLoop
from edged.workers.base import WorkerArgs, setup_process

log = structlog.get_logger()

_OPEN_EVERY_S = 1.0  # retry opening a database the sink has not created yet
_BACKLOG_EVERY_S = 1.0
_ONLINE_WITHOUT_FRAMES_S = 10.0  # the supervisor's READY rule for a source that is absent
_IDLE_WAIT_S = 0.5  # longest sleep between passes (the heartbeat's period when idle)
_STORE_RETRY_S = 5.0


class Uplink:
    """What the loop does each pass, apart from the heartbeat."""

    def __init__(self, args: WorkerArgs, control: ControlBlock, link: MqttLink,
                 topics: Topics, device: str) -> None:
        self.cfg, self.control, self.link = args.config, control, link
        self.topics, self.device = topics, device
        self.started = time.monotonic()
        self.outbox: Outbox | None = None
        self.sync: SyncLoop | None = None
        self.announced = 0  # link.connections when `online` was last published
        self.backlog = 0
        self._next_open = self._next_backlog = self._next_poll = 0.0
        self._next_stats = self.started + min(5.0, self.cfg.mqtt.stats_interval_s)
        self._stats_at, self._stats_inferred = self.started, 0

    @property
    def sent(self) -> int:
        return self.sync.sent if self.sync else 0

    def tick(self, now: float) -> bool:
        """One pass; True when it published events (then the next pass comes at once)."""
        if self.outbox is None and now >= self._next_open:
            self._open(now)
        self.control.put(Counter.UPLINK_CONNECTED, int(self.link.connected))
        self._announce(now)
        published = 0
        if self.sync is not None and now >= self._next_poll:
            try:
                published = self.sync.step()
            except StoreError as exc:
                log.error("uplink.outbox_failed", error=str(exc), retry_in_s=_STORE_RETRY_S)
                self._next_poll = now + _STORE_RETRY_S
            else:
                self._next_poll = now if published else now + self.cfg.sync.interval_s
            self.control.put(Counter.OUTBOX_SENT, self.sync.sent)
        if self.outbox is not None and (published or now >= self._next_backlog):
            self.count_backlog(now)
        if now >= self._next_stats:
            self._stats(now)
        return bool(published)

    def _open(self, now: float) -> None:
        self._next_open = now + _OPEN_EVERY_S
        try:
            self.outbox = Outbox.open(self.cfg.store.path)
        except StoreError as exc:
            log.error("uplink.outbox_unavailable", error=str(exc))
            return
        if self.outbox is not None:
            self.sync = SyncLoop(self.outbox, self.link, self.cfg.sync, self.topics.events,
                                 self.device)
            log.info("uplink.outbox_opened", path=str(self.cfg.store.path),
                     send=self.cfg.sync.send)

    def _announce(self, now: float) -> None:
        """`online` (and discovery) once per connection, once the pipeline is up."""
        if not self.link.connected or self.announced == self.link.connections:
            return
        ready = self.control.counter(Counter.FRAMES_INFERRED) > 0 or \
            now - self.started >= _ONLINE_WITHOUT_FRAMES_S
        if not ready:
            return
        self.announced = self.link.connections
        if self.cfg.mqtt.ha_discovery:
            for topic, payload in discovery_messages(self.cfg.mqtt, self.device, self.topics):
                self.link.publish(topic, payload, retain=True)
        self.link.publish(self.topics.status, "online", retain=True)
        self._next_stats = now  # a fresh retained stats message with it
        log.info("uplink.online", topic=self.topics.status)

    def count_backlog(self, now: float) -> None:
        self._next_backlog = now + _BACKLOG_EVERY_S
        assert self.outbox is not None
        try:
            self.backlog = self.outbox.backlog()
        except StoreError as exc:
            log.warning("uplink.backlog_unknown", error=str(exc))
            return
        self.control.put(Counter.OUTBOX_BACKLOG, self.backlog)

    def _stats(self, now: float) -> None:
        self._next_stats = now + self.cfg.mqtt.stats_interval_s
        c = self.control
        inferred = c.counter(Counter.FRAMES_INFERRED)
        fps = (inferred - self._stats_inferred) / max(now - self._stats_at, 1e-6)
        self._stats_at, self._stats_inferred = now, inferred
        level = c.counter(Counter.MODE_LEVEL)
        figures = {
            "ts": round(time.time(), 3),
            "device": self.device,
            "uptime_s": round(now - self.started, 1),
            "fps": round(fps, 2),
            "frames_inferred": inferred,
            "events_written": c.counter(Counter.EVENTS_COMMITTED),
            "events_sent": self.sent,
            "backlog": self.backlog,
            "db_bytes": c.counter(Counter.DB_BYTES),
            "thermal_mode": LEVELS[level] if 0 <= level < len(LEVELS) else None,
        }
        self.link.publish(self.topics.stats, stats_payload(figures), qos=0, retain=True)


def run(args: WorkerArgs) -> int:
    ctx = setup_process(args)
    control, stop, me = ctx.control, ctx.stop, args.worker
    cfg = args.config
    device = device_name(cfg.mqtt)
    topics = Topics.for_device(cfg.mqtt.topic_prefix, device)
    link = MqttLink(cfg.mqtt, cfg.sync, topics, client_id(cfg.mqtt, device))
    uplink = Uplink(args, control, link, topics, device)
    link.start()
    control.set(me, Slot.LOOP_READY, 1)
    log.info("uplink.ready", host=cfg.mqtt.host, port=cfg.mqtt.port, events=topics.events,
             send=cfg.sync.send)
    try:
        while not stop:
            control.beat(me, uplink.sent)
            ctx.reloads.poll()  # consumed: a change of mqtt/sync restarts this worker
            if not uplink.tick(time.monotonic()):
                time.sleep(min(_IDLE_WAIT_S, cfg.sync.interval_s))
        if uplink.sync is not None and link.connected:
            flushed = uplink.sync.flush(cfg.sync.flush_timeout_s, lambda: control.beat(me))
            log.info("uplink.flushed", sent=flushed, inflight=len(uplink.sync.inflight))
        if uplink.outbox is not None:
            uplink.count_backlog(time.monotonic())
    finally:
        link.stop()
        if uplink.outbox is not None:
            uplink.outbox.close()
    log.info("uplink.stopped", sent=uplink.sent, backlog=uplink.backlog)
    return 0

"""Uplink: events from the SQLite outbox to an MQTT broker, availability, stats, discovery.

Runs in its own worker process (`edged.workers.uplink`), so a slow or absent network never
touches the sink, and the watchdog can restart it like any other worker.

* `messages`: topics and JSON payloads (events, stats, Home Assistant discovery).
* `mqtt`: one paho client, its network thread, and which messages the broker acknowledged.
* `sync`: the store-and-forward loop: pending outbox rows -> QoS 1 -> marked sent on PUBACK.
"""

"""A real Mosquitto broker on 127.0.0.1 and a recording subscriber, for the uplink tests.

The broker is Debian's `mosquitto` package, unpacked (never installed, which would start a
system service) by `make setup` into `$EDGED_CACHE/mosquitto` together with the two libraries
it needs that a Debian 12 base lacks (libwrap0, libdlt2). An installed `mosquitto` on PATH or
in /usr/sbin is used when the cache has none.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

CACHE = Path(os.environ.get("EDGED_CACHE", Path.home() / ".cache" / "edged"))


def mosquitto_binary() -> tuple[Path, Path | None]:
    """(broker executable, folder of its unpacked libraries or None)."""
    unpacked = CACHE / "mosquitto" / "usr" / "sbin" / "mosquitto"
    if unpacked.exists():
        libs = next((p for p in (CACHE / "mosquitto" / "usr" / "lib").glob("*-linux-gnu*")), None)
        return unpacked, libs
    for candidate in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if candidate and Path(candidate).exists():
            return Path(candidate), None
    # A missing broker is a broken setup, never a reason to skip.
    pytest.fail(f"no mosquitto in {unpacked} or on PATH; run `make setup` first", pytrace=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Broker:
    """mosquitto on 127.0.0.1:<port> with persistence, so sessions survive a restart."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.binary, self.libs = mosquitto_binary()
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "mosquitto.log"
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {workdir}/\n"
            f"log_dest file {self.log_path}\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
            # Keep every queued message of a persistent session while its client is away.
            "max_queued_messages 0\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 10.0) -> None:
        env = dict(os.environ)
        if self.libs is not None:
            env["LD_LIBRARY_PATH"] = f"{self.libs}:{env.get('LD_LIBRARY_PATH', '')}"
        self.proc = subprocess.Popen([str(self.binary), "-c", str(self.conf)], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise AssertionError(f"mosquitto exited {self.proc.returncode}: {err}")
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), timeout=0.2):
                return
            time.sleep(0.05)
        raise AssertionError(f"mosquitto did not listen on {self.port} within {timeout_s} s")

    def stop(self) -> None:
        """SIGTERM: mosquitto writes its persistence file (sessions, queued messages)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@pytest.fixture()
def broker(tmp_path: Path) -> Iterator[Broker]:
    started = Broker(tmp_path / "broker")
    started.start()
    yield started
    started.stop()


class Subscriber:
    """A paho client that records every message; persistent session (clean_session False),
    QoS 1, so nothing published while it is away from a live broker is lost."""

    def __init__(self, port: int, topics: list[str], client_id: str = "edged-test-sub") -> None:
        self.messages: list[tuple[str, bytes, bool]] = []  # (topic, payload, retained)
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.topics = topics
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                             clean_session=False, protocol=mqtt.MQTTv311)
        client.reconnect_delay_set(1, 1)
        client.on_connect = self._on_connect
        client.on_subscribe = lambda *a: self._subscribed.set()
        client.on_message = self._on_message
        self.client = client
        client.connect_async("127.0.0.1", port, keepalive=10)
        client.loop_start()
        if not self._subscribed.wait(10):
            raise AssertionError("subscriber did not subscribe within 10 s")

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object, reason: object,
                    properties: object) -> None:
        client.subscribe([(topic, 1) for topic in self.topics])

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def on(self, topic: str) -> list[bytes]:
        with self._lock:
            return [payload for t, payload, _ in self.messages if t == topic]

    def wait_for(self, predicate: object, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate():  # type: ignore[operator]
                return
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def duplicates(uids: list[str]) -> dict[str, int]:
    return {uid: n for uid, n in Counter(uids).items() if n > 1}

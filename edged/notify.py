"""sd_notify to systemd (Type=notify): silent no-op without NOTIFY_SOCKET, errors logged."""

from __future__ import annotations

import os
import socket
import time

import structlog

log = structlog.get_logger()


class Notifier:
    def __init__(self, address: str | None = None) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        self.enabled = bool(address)
        # A leading "@" names a socket in the abstract namespace.
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._sock: socket.socket | None = None
        self._failed = False

    def send(self, *fields: str) -> bool:
        if not self.enabled:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(fields).encode(), self._address)
        except OSError as exc:
            if not self._failed:  # say it once, not at every status tick
                log.error("notify.failed", error=str(exc), socket=self._address)
            self._failed = True
            return False
        self._failed = False
        return True

    def ready(self) -> bool:
        return self.send("READY=1", f"MAINPID={os.getpid()}")

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    def reloading(self) -> bool:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def extend_timeout(self, seconds: float) -> bool:
        return self.send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1e6)}")

    @staticmethod
    def watchdog_interval_s() -> float | None:
        """A third of systemd's WatchdogSec (WATCHDOG_USEC), when it is meant for us: one
        late tick (a reload reading the model) must not cost the last ping of slack."""
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        if not usec.isdigit() or (pid and pid != str(os.getpid())):
            return None
        return int(usec) / 3e6

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

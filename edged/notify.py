"""sd_notify to systemd (Type=notify): silent no-op without NOTIFY_SOCKET, errors logged."""

from __future__ import annotations

import os
import socket

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

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

"""Helpers for tests that run the real daemon as a subprocess tree."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

EDGED = [sys.executable, "-m", "edged"]


def write_config(path: Path, **sections: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(sections, sort_keys=False))
    return path


class Daemon:
    """`edged run` in its own process group, with JSON logs captured to a file."""

    def __init__(self, config: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.log_path = config.with_suffix(".log")
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [*EDGED, "run", "--config", str(config), *extra],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, **(env or {})},
        )

    def events(self) -> list[dict[str, Any]]:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def find(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events() if e.get("event") == event]

    def wait_for(self, predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; log:\n{self.log_path.read_text()}")

    def wait(self, timeout_s: float) -> int:
        return self.proc.wait(timeout_s)

    def kill_group(self) -> None:
        # SIGCONT first: a SIGSTOPped worker would otherwise never die and hang the suite.
        for signum in (signal.SIGCONT, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signum)
        self.proc.wait(10)
        self._log.close()


@pytest.fixture()
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for daemon in started:
        daemon.kill_group()


@pytest.fixture()
def pipeline_config(
    tmp_path: Path, default_model: Path, sample_video: Path
) -> Callable[..., Path]:
    """A config on the real model and video, 1 intra-op thread, JSON logs; override by section."""

    def make(**overrides: dict[str, Any]) -> Path:
        sections: dict[str, dict[str, Any]] = {
            "source": {"uri": str(sample_video), "name": "vtest", "mode": "lossless"},
            "model": {"path": str(default_model), "input_size": 416, "intra_op_threads": 1},
            "store": {"path": str(tmp_path / "events.db"), "commit_interval_s": 0.5},
            "logging": {"format": "json", "level": "info"},
            "daemon": {"status_interval_s": 1, "runtime_dir": str(tmp_path / "run")},
            "metrics": {"enabled": False},
        }
        for section, values in overrides.items():
            sections.setdefault(section, {}).update(values)
        return write_config(tmp_path / "edged.yaml", **sections)

    return make


class MjpegServer:
    """A network camera stand-in: an MJPEG-over-HTTP stream of the sample video on 127.0.0.1.

    `stop()` closes the listening socket and every open stream, like a camera losing power;
    `start()` brings it back on the same port.
    """

    def __init__(self, video: Path, fps: float = 10.0, frames: int = 60) -> None:
        import cv2

        cap = cv2.VideoCapture(str(video))
        self.jpegs: list[bytes] = []
        while len(self.jpegs) < frames:
            ok, frame = cap.read()
            if not ok:
                break
            self.jpegs.append(cv2.imencode(".jpg", frame)[1].tobytes())
        cap.release()
        self.period = 1.0 / fps
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/stream.mjpg"
        self._server: ThreadingHTTPServer | None = None
        self._running = threading.Event()

    def start(self) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                index = 0
                with contextlib.suppress(OSError):
                    while owner._running.is_set():
                        jpeg = owner.jpegs[index % len(owner.jpegs)]
                        index += 1
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\n"
                                         b"Content-Length: %d\r\n\r\n%s\r\n" % (len(jpeg), jpeg))
                        time.sleep(owner.period)

            def log_message(self, *args: object) -> None:
                pass

        self._running.set()
        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._running.clear()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class NotifySocket:
    """A real NOTIFY_SOCKET: a datagram socket that records (monotonic time, message)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode()))

    def times(self, prefix: str) -> list[float]:
        return [at for at, text in self.messages if any(
            line.startswith(prefix) for line in text.splitlines())]

    def statuses(self) -> list[tuple[float, str]]:
        return [(at, text[len("STATUS="):]) for at, text in self.messages
                if text.startswith("STATUS=")]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()

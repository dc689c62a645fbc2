"""Journald line format, sd_notify datagrams, and stale shared-memory clean-up."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
from pathlib import Path

import structlog

from edged.config import LoggingConfig
from edged.ipc.segment import PREFIX, Segment, new_run_id, remove_stale_segments, segment_name
from edged.logging import setup_logging
from edged.notify import Notifier


def test_journal_format_prefixes_syslog_priorities() -> None:
    stream = io.StringIO()
    setup_logging(LoggingConfig(format="journal", level="debug"), "capture", stream)
    log = structlog.get_logger()
    log.info("capture.opened", fps=10)
    log.warning("capture.reconnecting", reason="read failed")
    log.error("sink.results_overflowed", lost=3)
    log.debug("worker.state", new="running")
    lines = stream.getvalue().splitlines()
    assert lines[0] == "<6>capture.opened fps=10 proc=capture"
    assert lines[1] == "<4>capture.reconnecting reason='read failed' proc=capture"
    assert lines[2].startswith("<3>sink.results_overflowed lost=3")
    assert lines[3].startswith("<7>worker.state")


def test_level_filter_drops_debug() -> None:
    stream = io.StringIO()
    setup_logging(LoggingConfig(format="json", level="info"), "sink", stream)
    structlog.get_logger().debug("noise")
    structlog.get_logger().info("signal", n=1)
    assert '"event": "signal"' in stream.getvalue() and "noise" not in stream.getvalue()


def test_notifier_sends_datagrams_and_is_silent_without_socket(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    server.settimeout(2)
    try:
        notifier = Notifier(str(path))
        assert notifier.ready() and notifier.status("fps 9.8")
        assert server.recv(4096).decode().startswith("READY=1\nMAINPID=")
        assert server.recv(4096) == b"STATUS=fps 9.8"
        notifier.close()
    finally:
        server.close()
    assert Notifier("").ready() is False


def test_stale_segments_of_dead_owners_are_removed_live_ones_kept() -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    stale = Segment.create(f"{PREFIX}{dead_pid}-deadbeef.frames", 4096)
    live = Segment.create(segment_name(new_run_id(), "frames"), 4096)
    try:
        removed = remove_stale_segments()
        assert stale.name in removed
        assert not os.path.exists(f"/dev/shm/{stale.name}")
        assert os.path.exists(f"/dev/shm/{live.name}")
    finally:
        live.unlink()
        stale.unlink()

"""Helpers for tests that run the real daemon as a subprocess tree."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
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
        }
        for section, values in overrides.items():
            sections.setdefault(section, {}).update(values)
        return write_config(tmp_path / "edged.yaml", **sections)

    return make

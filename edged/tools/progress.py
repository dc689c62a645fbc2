"""A one-line progress bar for long commands, on a terminal only (never in logs or pipes)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TextIO

Progress = Callable[[int, int], None]


def tty_progress(label: str, stream: TextIO = sys.stderr, width: int = 30) -> Progress | None:
    """A `progress(done, total)` callback drawing `label [####....] done/total`, or None
    when `stream` is not a terminal (scripts and CI see no control characters)."""
    if not stream.isatty():
        return None

    def show(done: int, total: int) -> None:
        filled = width * done // max(total, 1)
        stream.write(f"\r{label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
        if done >= total:
            stream.write("\n")
        stream.flush()

    return show

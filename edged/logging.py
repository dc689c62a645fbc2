"""structlog setup: priority-prefixed lines under systemd, colours on a TTY, JSON otherwise.

Every process (supervisor and workers) calls `setup_logging` with the same settings and
writes to the same inherited stderr, so all logs reach one place.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from edged.config import LoggingConfig

# syslog priorities understood by journald's stream transport (sd-daemon.h)
_PRIORITY = {"critical": 2, "error": 3, "warning": 4, "info": 6, "debug": 7}


def _under_journald(stream: TextIO) -> bool:
    """True when stderr is the journal stream systemd gave us (JOURNAL_STREAM=dev:inode)."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    if not expected:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError):
        return False
    return expected == f"{st.st_dev}:{st.st_ino}"


def resolve_format(cfg: LoggingConfig, stream: TextIO = sys.stderr) -> str:
    if cfg.format != "auto":
        return cfg.format
    if _under_journald(stream):
        return "journal"
    return "console" if stream.isatty() else "json"


def _journal_renderer(_: Any, method: str, event: MutableMapping[str, Any]) -> str:
    level = str(event.pop("level", method))
    event.pop("timestamp", None)  # journald stamps every line itself
    name = event.pop("event", "")
    fields = " ".join(f"{key}={_quote(value)}" for key, value in event.items())
    return f"<{_PRIORITY.get(level, 6)}>{name} {fields}".rstrip()


def _quote(value: Any) -> str:
    text = str(value)
    return repr(text) if (" " in text or not text) else text


def setup_logging(cfg: LoggingConfig, process: str, stream: TextIO = sys.stderr) -> None:
    """Configure structlog for this process; `process` names it in every line."""
    fmt = resolve_format(cfg, stream)
    renderer: Any
    if fmt == "journal":
        renderer = _journal_renderer
    elif fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty(), sort_keys=False)
    else:
        renderer = structlog.processors.JSONRenderer()
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.format_exc_info,
    ]
    if fmt != "journal":
        processors.append(structlog.processors.TimeStamper(fmt="iso", utc=False))
    processors.append(renderer)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(
            getattr(logging, cfg.level.upper())),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(proc=process)
    _quiet_opencv()


def _quiet_opencv() -> None:
    """OpenCV prints its own warnings to stderr; we report failures as events instead.

    Only where OpenCV is already loaded: importing it just for this would cost the
    supervisor and the sink tens of MB they never use.
    """
    cv2 = sys.modules.get("cv2")
    if cv2 is not None:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)

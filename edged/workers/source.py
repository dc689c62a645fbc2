"""Opening and reading a video source through OpenCV: files, V4L2/USB cameras, RTSP/HTTP."""

from __future__ import annotations

import cv2
import numpy as np
import structlog

from edged.config import SourceConfig, redact_uri

log = structlog.get_logger()

_DEFAULT_FILE_FPS = 25.0


class SourceError(Exception):
    """The source cannot be opened or stopped delivering frames."""


class VideoSource:
    def __init__(self, cfg: SourceConfig) -> None:
        self.cfg = cfg
        self.shown = redact_uri(cfg.uri)
        self._cap: cv2.VideoCapture | None = None
        self.nominal_fps = 0.0
        self.position = 0  # frames read since open (the file position for files)

    def open(self) -> None:
        kind = self.cfg.kind
        if kind == "camera":
            target: int | str = int(self.cfg.uri) if self.cfg.uri.isdigit() else self.cfg.uri
            cap = cv2.VideoCapture(target, cv2.CAP_V4L2)
        elif kind == "url":
            # A stalled stream must fail the read within timeout_s (then we reconnect),
            # not block the capture loop until the watchdog calls it a stall.
            timeout_ms = int(self.cfg.timeout_s * 1000)
            cap = cv2.VideoCapture(self.cfg.uri, cv2.CAP_FFMPEG,
                                   [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms,
                                    cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms])
        else:
            cap = cv2.VideoCapture(self.cfg.uri)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"cannot open {kind} source {self.shown}")
        if kind != "file":
            # Keep at most one frame queued in the driver: a fresh frame beats a stale one.
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        reported = cap.get(cv2.CAP_PROP_FPS)
        self.nominal_fps = reported if 0 < reported < 1000 else _DEFAULT_FILE_FPS
        self._cap = cap
        self.position = 0
        log.info("capture.opened", source=self.shown, kind=kind, fps=round(self.nominal_fps, 2),
                 width=int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
                 height=int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))

    def read(self) -> np.ndarray | None:
        """The next frame; None at the end of a file. Raises SourceError on a read failure."""
        if self._cap is None:
            raise SourceError("source is not open")
        ok, frame = self._cap.read()
        if not ok or frame is None:
            if self.cfg.kind == "file":
                return None
            raise SourceError(f"read failed on {self.shown}")
        self.position += 1
        return self._fit(frame)

    def rewind(self) -> bool:
        if self._cap is None or not self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0):
            return False
        self.position = 0
        return True

    def _fit(self, frame: np.ndarray) -> np.ndarray:
        height, width = frame.shape[:2]
        limit_w, limit_h = self.cfg.max_width, self.cfg.max_height
        if width <= limit_w and height <= limit_h:
            return frame
        scale = min(limit_w / width, limit_h / height)
        size = (max(1, int(width * scale)), max(1, int(height * scale)))
        return cv2.resize(frame, size, interpolation=cv2.INTER_AREA)

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

"""Capture -> inference: BGR frames in a shared-memory drop-oldest ring (no pickling)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edged.ipc.ring import Ring, RingLayout
from edged.ipc.segment import Segment

_META_WORDS = 8  # seq, item, height, width, capture_mono_ns, wall_ns, source_index, pos
_H, _W, _MONO, _WALL, _SRC, _POS = range(2, 8)


@dataclass(frozen=True)
class FrameHeader:
    item: int  # ring sequence number: gaps mean dropped frames
    capture_mono_ns: int
    wall_ns: int
    source_index: int
    position: int  # frame number within the source (file position or camera count)


def frame_layout(slots: int, max_width: int, max_height: int) -> RingLayout:
    return RingLayout(slots, max_width * max_height * 3, _META_WORDS)


def create_frame_ring(name: str, slots: int, max_width: int, max_height: int) -> Segment:
    return Ring.create(name, frame_layout(slots, max_width, max_height))


class FrameWriter:
    def __init__(self, segment: Segment) -> None:
        self.ring = Ring(segment)
        # We are the only writer now; a predecessor killed mid-write left a slot half done.
        self.ring.repair_after_writer_death()

    def put(self, image: np.ndarray, header: FrameHeader) -> int:
        """Write a BGR uint8 HxWx3 frame; overwrites the oldest unread frame when full."""
        if not image.flags.c_contiguous:
            image = np.ascontiguousarray(image)
        height, width = image.shape[:2]
        nbytes = image.nbytes
        if nbytes > self.ring.layout.payload_bytes:
            raise ValueError(f"frame {width}x{height} exceeds the ring's slot size")

        def fill(meta: np.ndarray, payload: np.ndarray) -> None:
            payload[:nbytes] = image.reshape(-1)
            meta[_H], meta[_W] = height, width
            meta[_MONO], meta[_WALL] = header.capture_mono_ns, header.wall_ns
            meta[_SRC], meta[_POS] = header.source_index, header.position

        return self.ring.write(fill)

    def wait_for_room(self, timeout_s: float, should_stop: Callable[[], bool]) -> bool:
        return self.ring.wait_for_room(timeout_s, should_stop)


class FrameReader:
    """Copies each frame into a buffer of its own, so the writer may reuse the slot at once."""

    def __init__(self, segment: Segment) -> None:
        self.ring = Ring(segment)
        self._buffer = np.empty(self.ring.layout.payload_bytes, np.uint8)
        self._shape = (0, 0)
        self._header: FrameHeader | None = None

    def get(self, timeout_s: float) -> tuple[np.ndarray, FrameHeader] | None:
        """The oldest intact frame, or None on timeout. The array is valid until next get()."""

        def copy(meta: np.ndarray, payload: np.ndarray) -> None:
            height, width = int(meta[_H]), int(meta[_W])
            nbytes = height * width * 3
            np.copyto(self._buffer[:nbytes], payload[:nbytes])
            self._shape = (height, width)
            self._header = FrameHeader(
                int(meta[1]), int(meta[_MONO]), int(meta[_WALL]), int(meta[_SRC]), int(meta[_POS])
            )

        if self.ring.read(copy, timeout_s) is None:
            return None
        height, width = self._shape
        assert self._header is not None
        image = self._buffer[: height * width * 3].reshape(height, width, 3)
        return image, self._header

"""Inference -> sink: the detections of each inferred frame as fixed-size records.

Sized so it never overflows in normal operation (the sink drains it every few ms); when it
does, the oldest records are lost, and the reader counts and reports them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edged.ipc.ring import Ring, RingLayout
from edged.ipc.segment import Segment
from edged.vision.detections import Detections

_META_WORDS = 10  # seq, item, frame_item, capture_mono_ns, wall_ns, source, pos, n, infer_us, size
_FRAME, _MONO, _WALL, _SRC, _POS, _COUNT, _INFER_US, _SIZE = range(2, 10)
_COLUMNS = 6  # x1, y1, x2, y2, score, class_id


@dataclass(frozen=True)
class FrameResult:
    frame_item: int
    capture_mono_ns: int
    wall_ns: int
    source_index: int
    position: int
    infer_us: int
    input_size: int
    detections: Detections


def result_layout(slots: int, max_det: int) -> RingLayout:
    return RingLayout(slots, max_det * _COLUMNS * 4, _META_WORDS)


def create_result_ring(name: str, slots: int, max_det: int) -> Segment:
    return Ring.create(name, result_layout(slots, max_det))


class ResultWriter:
    def __init__(self, segment: Segment) -> None:
        self.ring = Ring(segment)
        self.ring.repair_after_writer_death()
        self._max_det = self.ring.layout.payload_bytes // (_COLUMNS * 4)

    def put(self, result: FrameResult) -> int:
        dets = result.detections
        count = min(len(dets), self._max_det)

        def fill(meta: np.ndarray, payload: np.ndarray) -> None:
            rows = payload.view(np.float32).reshape(-1, _COLUMNS)
            rows[:count, :4] = dets.boxes[:count]
            rows[:count, 4] = dets.scores[:count]
            rows[:count, 5] = dets.class_ids[:count]
            meta[_FRAME], meta[_MONO], meta[_WALL] = (
                result.frame_item, result.capture_mono_ns, result.wall_ns)
            meta[_SRC], meta[_POS], meta[_COUNT] = result.source_index, result.position, count
            meta[_INFER_US], meta[_SIZE] = result.infer_us, result.input_size

        return self.ring.write(fill)


class ResultReader:
    def __init__(self, segment: Segment) -> None:
        self.ring = Ring(segment)

    def get(self, timeout_s: float) -> FrameResult | None:
        out: list[FrameResult] = []

        def copy(meta: np.ndarray, payload: np.ndarray) -> None:
            count = int(meta[_COUNT])
            rows = payload.view(np.float32).reshape(-1, _COLUMNS)[:count].copy()
            dets = Detections(
                rows[:, :4].copy(), rows[:, 4].copy(), rows[:, 5].astype(np.int32))
            out.append(FrameResult(
                int(meta[_FRAME]), int(meta[_MONO]), int(meta[_WALL]), int(meta[_SRC]),
                int(meta[_POS]), int(meta[_INFER_US]), int(meta[_SIZE]), dets))

        if self.ring.read(copy, timeout_s) is None:
            return None
        return out[-1]  # a torn copy is retried, so only the last one counts

"""Inference -> sink: the detections (or tracker predictions) of each frame as fixed-size
records.

Sized so it never overflows in normal operation (the sink drains it every few ms); when it
does, the oldest records are lost, and the reader counts and reports them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edged.ipc.ring import Ring, RingLayout
from edged.ipc.segment import Segment
from edged.vision.detections import Detections

_META_WORDS = 11  # seq, item, frame_item, mono_ns, wall_ns, source, pos, n, infer_us, size, flags
_FRAME, _MONO, _WALL, _SRC, _POS, _COUNT, _INFER_US, _SIZE, _FLAGS = range(2, 11)
_PREDICTED = 1  # flags bit: a skipped frame, boxes predicted by the tracker
_ROW = np.dtype([("box", "<f4", 4), ("score", "<f4"), ("class_id", "<i4"), ("track_id", "<i4")])
_NO_TRACK = -1


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
    predicted: bool = False


def result_layout(slots: int, max_det: int) -> RingLayout:
    return RingLayout(slots, max_det * _ROW.itemsize, _META_WORDS)


def create_result_ring(name: str, slots: int, max_det: int) -> Segment:
    return Ring.create(name, result_layout(slots, max_det))


class ResultWriter:
    def __init__(self, segment: Segment) -> None:
        self.ring = Ring(segment)
        self.ring.repair_after_writer_death()
        self._max_det = self.ring.layout.payload_bytes // _ROW.itemsize

    def put(self, result: FrameResult) -> int:
        dets = result.detections
        count = min(len(dets), self._max_det)

        def fill(meta: np.ndarray, payload: np.ndarray) -> None:
            rows = payload[: count * _ROW.itemsize].view(_ROW)
            rows["box"] = dets.boxes[:count]
            rows["score"] = dets.scores[:count]
            rows["class_id"] = dets.class_ids[:count]
            rows["track_id"] = _NO_TRACK if dets.track_ids is None else dets.track_ids[:count]
            meta[_FRAME], meta[_MONO], meta[_WALL] = (
                result.frame_item, result.capture_mono_ns, result.wall_ns)
            meta[_SRC], meta[_POS], meta[_COUNT] = result.source_index, result.position, count
            meta[_INFER_US], meta[_SIZE] = result.infer_us, result.input_size
            meta[_FLAGS] = _PREDICTED if result.predicted else 0

        return self.ring.write(fill)


class ResultReader:
    def __init__(self, segment: Segment) -> None:
        self.ring = Ring(segment)

    def get(self, timeout_s: float) -> FrameResult | None:
        out: list[FrameResult] = []

        def copy(meta: np.ndarray, payload: np.ndarray) -> None:
            count = int(meta[_COUNT])
            rows = payload[: count * _ROW.itemsize].view(_ROW).copy()
            tracks = rows["track_id"]
            dets = Detections(rows["box"], rows["score"], rows["class_id"],
                              None if (tracks == _NO_TRACK).all() else tracks)
            out.append(FrameResult(
                int(meta[_FRAME]), int(meta[_MONO]), int(meta[_WALL]), int(meta[_SRC]),
                int(meta[_POS]), int(meta[_INFER_US]), int(meta[_SIZE]), dets,
                bool(int(meta[_FLAGS]) & _PREDICTED)))

        if self.ring.read(copy, timeout_s) is None:
            return None
        return out[-1]  # a torn copy is retried, so only the last one counts

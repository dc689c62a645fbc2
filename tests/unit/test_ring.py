"""Drop-oldest semantics of the shared-memory rings, in one process."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from edged.ipc.frames import FrameHeader, FrameReader, FrameWriter, create_frame_ring
from edged.ipc.results import FrameResult, ResultReader, ResultWriter, create_result_ring
from edged.ipc.segment import Segment, new_run_id, segment_name
from edged.vision.detections import Detections


@pytest.fixture()
def frame_segment() -> Iterator[Segment]:
    segment = create_frame_ring(segment_name(new_run_id(), "frames"), 4, 64, 48)
    yield segment
    segment.unlink()


def _frame(value: int, width: int = 64, height: int = 48) -> np.ndarray:
    return np.full((height, width, 3), value % 256, np.uint8)


def _header(position: int) -> FrameHeader:
    return FrameHeader(0, position, position, 0, position)


def test_full_ring_drops_the_oldest_and_counts_it(frame_segment: Segment) -> None:
    writer, reader = FrameWriter(frame_segment), FrameReader(frame_segment)
    for position in range(10):
        writer.put(_frame(position), _header(position))
    got = []
    while (item := reader.get(timeout_s=0.01)) is not None:
        got.append(item[1].position)
    # The slot of the oldest item may be mid-rewrite, so N-1 of N slots are readable.
    assert got == [7, 8, 9]
    assert reader.ring.drops == 7
    assert reader.ring.depth == 0


def test_reader_gets_every_frame_when_it_keeps_up(frame_segment: Segment) -> None:
    writer, reader = FrameWriter(frame_segment), FrameReader(frame_segment)
    for position in range(50):
        writer.put(_frame(position, 32, 16), _header(position))
        image, header = reader.get(timeout_s=0.01) or (None, None)
        assert header is not None and header.position == position
        assert image is not None and image.shape == (16, 32, 3) and image[0, 0, 0] == position
    assert reader.ring.drops == 0


def test_empty_ring_times_out(frame_segment: Segment) -> None:
    assert FrameReader(frame_segment).get(timeout_s=0.01) is None


def test_oversized_frame_is_refused(frame_segment: Segment) -> None:
    with pytest.raises(ValueError, match="exceeds"):
        FrameWriter(frame_segment).put(_frame(1, 128, 96), _header(0))


def test_lossless_writer_waits_for_room(frame_segment: Segment) -> None:
    writer, reader = FrameWriter(frame_segment), FrameReader(frame_segment)
    for position in range(3):
        assert writer.wait_for_room(0.01, lambda: False)
        writer.put(_frame(position), _header(position))
    assert not writer.wait_for_room(0.02, lambda: False)
    assert reader.get(timeout_s=0.01) is not None
    assert writer.wait_for_room(0.01, lambda: False)


def test_a_restarted_reader_continues_at_the_shared_cursor(frame_segment: Segment) -> None:
    writer = FrameWriter(frame_segment)
    for position in range(3):
        writer.put(_frame(position), _header(position))
    first = FrameReader(frame_segment)
    assert first.get(timeout_s=0.01)[1].position == 0  # type: ignore[index]
    second = FrameReader(frame_segment)
    assert second.get(timeout_s=0.01)[1].position == 1  # type: ignore[index]


def test_writer_killed_mid_write_leaves_a_readable_ring(frame_segment: Segment) -> None:
    writer = FrameWriter(frame_segment)
    writer.put(_frame(1), _header(1))
    meta = writer.ring._meta[1]
    meta[0] += 1  # what a SIGKILL between "odd" and "even" leaves behind
    successor = FrameWriter(frame_segment)
    successor.put(_frame(2), _header(2))
    reader = FrameReader(frame_segment)
    positions = [reader.get(0.01)[1].position for _ in range(2)]  # type: ignore[index]
    assert positions == [1, 2]


def test_result_ring_round_trip_and_overflow_count() -> None:
    segment = create_result_ring(segment_name(new_run_id(), "results"), 16, 5)
    try:
        writer, reader = ResultWriter(segment), ResultReader(segment)
        dets = Detections(
            np.array([[1, 2, 3, 4], [5, 6, 7, 8]], np.float32),
            np.array([0.9, 0.6], np.float32),
            np.array([0, 17], np.int32),
        )
        for item in range(20):
            writer.put(FrameResult(item, 1, 2, 0, item, 1500, 416, dets))
        first = reader.get(0.01)
        assert first is not None and first.frame_item == 5
        assert reader.ring.drops == 5
        np.testing.assert_array_equal(first.detections.boxes, dets.boxes)
        np.testing.assert_array_equal(first.detections.class_ids, dets.class_ids)
        assert first.infer_us == 1500 and first.input_size == 416
    finally:
        segment.unlink()

"""The frame ring across real processes: never a torn frame, drops counted exactly."""

from __future__ import annotations

import multiprocessing as mp
import time
import zlib

import numpy as np

from edged.ipc.frames import FrameHeader, FrameReader, FrameWriter, create_frame_ring
from edged.ipc.segment import Segment, list_segments, new_run_id, segment_name

FRAMES = 4000


def _stamp(image: np.ndarray) -> None:
    """Write a CRC of the rest of the frame into its first 4 bytes."""
    flat = image.reshape(-1)
    flat[:4] = np.frombuffer(zlib.crc32(flat[4:].tobytes()).to_bytes(4, "little"), np.uint8)


def _intact(image: np.ndarray) -> bool:
    flat = image.reshape(-1)
    return int.from_bytes(flat[:4].tobytes(), "little") == zlib.crc32(flat[4:].tobytes())


def _write_frames(name: str, count: int) -> None:
    writer = FrameWriter(Segment.attach(name))
    rng = np.random.default_rng(7)
    for position in range(count):
        height, width = int(rng.integers(40, 240)), int(rng.integers(40, 320))
        image = rng.integers(0, 256, (height, width, 3), np.uint8)
        _stamp(image)
        writer.put(image, FrameHeader(0, time.monotonic_ns(), 0, 0, position))


def test_frames_cross_processes_untorn_and_drops_are_counted() -> None:
    name = segment_name(new_run_id(), "frames")
    owner = create_frame_ring(name, 4, 320, 240)
    try:
        writer = mp.get_context("spawn").Process(target=_write_frames, args=(name, FRAMES))
        reader = FrameReader(Segment.attach(name))
        writer.start()
        received, torn, last = 0, 0, -1
        rng = np.random.default_rng(3)
        while True:
            got = reader.get(timeout_s=0.5)
            if got is None:
                if not writer.is_alive():
                    break
                continue
            image, header = got
            assert header.position > last, "frames must arrive in order"
            last = header.position
            received += 1
            torn += not _intact(image)
            if rng.random() < 0.3:  # a reader that is sometimes slower than the writer
                time.sleep(0.0005)
        writer.join(10)
        assert writer.exitcode == 0
        drops = reader.ring.drops
        print(f"received={received} dropped={drops} torn_retries={reader.ring.torn_reads}")
        assert torn == 0
        assert received + drops == FRAMES
        assert last == FRAMES - 1
        assert drops > 0, "the writer should have lapped the slow reader at least once"
    finally:
        owner.unlink()
    assert list_segments(name.split(".")[1]) == []

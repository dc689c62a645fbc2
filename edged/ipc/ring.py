"""A single-writer, single-reader, drop-oldest ring of fixed-size slots in shared memory.

Lock-free on purpose: a worker SIGKILLed or SIGSTOPped at any instant must never leave a lock
held that stalls the other side. Each slot carries a sequence number (seqlock): the writer
makes it odd, writes, then makes it even; the reader copies the slot and accepts the copy
only if the sequence was even and unchanged, so a frame is never torn.

The writer never waits (drop-oldest): it always writes slot `write_seq % N`, overwriting the
oldest item when the reader is behind. The reader notices the gap, counts the dropped items
and skips to the oldest item that is still intact. In `lossless` use the writer first calls
`wait_for_room`, which waits (with a timeout) until the reader has freed a slot.

Both cursors live in the segment, so a restarted writer or reader continues where its
predecessor stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edged.ipc.segment import Segment, fence

_HEADER_WORDS = 16  # one cache line of cursors and layout, one spare
_WRITE, _READ, _DROPS, _TORN, _NSLOTS, _SLOT_BYTES, _META_WORDS, _MAGIC, _PAYLOAD = range(9)
_MAGIC_VALUE = 0x65646765640001  # "edged" + layout version 1
_SLOT_SEQ = 0  # meta word 0 of every slot is its seqlock sequence
_SLOT_ITEM = 1  # meta word 1 is the item number held by the slot


@dataclass(frozen=True)
class RingLayout:
    nslots: int
    payload_bytes: int
    meta_words: int  # int64 words of per-slot metadata, including the two reserved above

    @property
    def slot_bytes(self) -> int:
        raw = self.meta_words * 8 + self.payload_bytes
        return (raw + 63) // 64 * 64  # cache-line aligned slots

    @property
    def total_bytes(self) -> int:
        return _HEADER_WORDS * 8 + self.nslots * self.slot_bytes


class Ring:
    """One side's view of a ring; create the segment with `Ring.create`, then attach."""

    def __init__(self, segment: Segment) -> None:
        self.segment = segment
        self._header = segment.array(np.int64, _HEADER_WORDS, 0)
        if int(self._header[_MAGIC]) != _MAGIC_VALUE:
            raise ValueError(f"segment {segment.name} is not an edged ring")
        self.layout = RingLayout(
            int(self._header[_NSLOTS]), int(self._header[_PAYLOAD]),
            int(self._header[_META_WORDS]),
        )
        stride = int(self._header[_SLOT_BYTES])
        base = _HEADER_WORDS * 8
        self._meta = [
            segment.array(np.int64, self.layout.meta_words, base + i * stride)
            for i in range(self.layout.nslots)
        ]
        self._payload = [
            segment.array(np.uint8, self.layout.payload_bytes, base + i * stride
                          + self.layout.meta_words * 8)
            for i in range(self.layout.nslots)
        ]

    @staticmethod
    def create(name: str, layout: RingLayout) -> Segment:
        segment = Segment.create(name, layout.total_bytes)
        header = segment.array(np.int64, _HEADER_WORDS, 0)
        header[_NSLOTS] = layout.nslots
        header[_SLOT_BYTES] = layout.slot_bytes
        header[_META_WORDS] = layout.meta_words
        header[_PAYLOAD] = layout.payload_bytes
        header[_MAGIC] = _MAGIC_VALUE
        return segment

    # -- counters shared by both sides ------------------------------------------------------
    @property
    def written(self) -> int:
        return int(self._header[_WRITE])

    @property
    def read_cursor(self) -> int:
        return int(self._header[_READ])

    @property
    def drops(self) -> int:
        """Items overwritten before the reader got to them."""
        return int(self._header[_DROPS])

    @property
    def depth(self) -> int:
        return max(0, min(self.written - self.read_cursor, self.layout.nslots))

    # -- writer -----------------------------------------------------------------------------
    def wait_for_room(self, timeout_s: float, should_stop: Callable[[], bool]) -> bool:
        """Lossless mode: wait until the reader has freed a slot; False on timeout/stop."""
        deadline = time.monotonic() + timeout_s
        # N-1, not N: the reader treats the slot the writer will reuse next as unsafe.
        while self.written - self.read_cursor >= self.layout.nslots - 1:
            if should_stop() or time.monotonic() >= deadline:
                return False
            time.sleep(0.001)
        return True

    def write(self, fill: Callable[[np.ndarray, np.ndarray], None]) -> int:
        """Write one item; `fill(meta, payload)` writes meta[2:] and the payload bytes."""
        item = int(self._header[_WRITE])
        slot = item % self.layout.nslots
        meta = self._meta[slot]
        meta[_SLOT_SEQ] += 1  # odd: being written
        fence()
        fill(meta, self._payload[slot])
        meta[_SLOT_ITEM] = item
        fence()
        meta[_SLOT_SEQ] += 1  # even: stable
        fence()
        self._header[_WRITE] = item + 1
        return item

    def repair_after_writer_death(self) -> None:
        """A writer killed mid-write leaves an odd sequence; make the slot readable-as-stale."""
        for meta in self._meta:
            if int(meta[_SLOT_SEQ]) % 2:
                meta[_SLOT_ITEM] = -1
                meta[_SLOT_SEQ] += 1

    # -- reader -----------------------------------------------------------------------------
    def read(
        self, copy: Callable[[np.ndarray, np.ndarray], None], timeout_s: float
    ) -> int | None:
        """Copy the oldest intact item out with `copy(meta, payload)`; None on timeout.

        Returns the item number. Items the writer overwrote first are counted as drops.
        """
        deadline = time.monotonic() + timeout_s
        nslots = self.layout.nslots
        while True:
            written = int(self._header[_WRITE])
            cursor = int(self._header[_READ])
            if cursor >= written:
                if time.monotonic() >= deadline:
                    return None
                time.sleep(0.001)
                continue
            # The slot of item `written - nslots` may be under rewrite right now; skip it.
            oldest_safe = written - nslots + 1
            if cursor < oldest_safe:
                self._header[_DROPS] += oldest_safe - cursor
                cursor = oldest_safe
                self._header[_READ] = cursor
            meta = self._meta[cursor % nslots]
            before = int(meta[_SLOT_SEQ])
            fence()
            if before % 2 or int(meta[_SLOT_ITEM]) != cursor:
                continue  # the writer lapped us: re-read the cursors and skip ahead
            copy(meta, self._payload[cursor % nslots])
            fence()
            if int(meta[_SLOT_SEQ]) != before:
                self._header[_TORN] += 1
                continue
            self._header[_READ] = cursor + 1
            return cursor

    def skip_to_latest(self) -> int:
        """Reader side: pass over everything but the newest item (after a pause); returns
        how many were passed over. They are not counted as drops: nobody was behind."""
        cursor, written = int(self._header[_READ]), int(self._header[_WRITE])
        skipped = max(0, written - 1 - cursor)
        if skipped:
            self._header[_READ] = cursor + skipped
        return skipped

    @property
    def torn_reads(self) -> int:
        """Copies discarded because the writer overwrote the slot meanwhile (then retried)."""
        return int(self._header[_TORN])

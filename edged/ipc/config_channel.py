"""Supervisor -> workers: the validated config after a reload (SIGHUP), as JSON in shared memory.

Workers poll the generation word once per loop (one integer read) and re-read the document
only when it changed; a seqlock keeps them from parsing a half-written document.
"""

from __future__ import annotations

import numpy as np

from edged.config import Config
from edged.ipc.segment import Segment, fence

_HEADER_WORDS = 4  # seq (odd while writing), generation, length, spare
_SEQ, _GENERATION, _LENGTH = range(3)
_CAPACITY = 256 * 1024


def create_config_channel(name: str) -> Segment:
    return Segment.create(name, _HEADER_WORDS * 8 + _CAPACITY)


class ConfigChannel:
    def __init__(self, segment: Segment) -> None:
        self.segment = segment
        self._header = segment.array(np.int64, _HEADER_WORDS, 0)
        self._body = segment.array(np.uint8, _CAPACITY, _HEADER_WORDS * 8)
        self.seen = int(self._header[_GENERATION])

    @property
    def generation(self) -> int:
        return int(self._header[_GENERATION])

    def publish(self, config: Config) -> int:
        """Writer side (the supervisor only); returns the new generation."""
        data = np.frombuffer(config.model_dump_json().encode(), np.uint8)
        if len(data) > _CAPACITY:
            raise ValueError("config too large for the reload channel")
        self._header[_SEQ] += 1
        fence()
        self._body[: len(data)] = data
        self._header[_LENGTH] = len(data)
        self._header[_GENERATION] += 1
        fence()
        self._header[_SEQ] += 1
        self.seen = self.generation
        return self.seen

    def poll(self) -> Config | None:
        """Reader side: the newer config, once per generation; None when nothing changed."""
        if int(self._header[_GENERATION]) == self.seen:
            return None
        while True:
            before = int(self._header[_SEQ])
            fence()
            generation = int(self._header[_GENERATION])
            raw = self._body[: int(self._header[_LENGTH])].tobytes()
            fence()
            if before % 2 == 0 and int(self._header[_SEQ]) == before:
                break
        self.seen = generation
        return Config.model_validate_json(raw)

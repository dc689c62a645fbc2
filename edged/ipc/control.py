"""The control block: one small shared-memory table of heartbeats, states and counters.

Every word has exactly one writer (a worker stamps its own row and its own counters; the
supervisor writes states and stop requests), so no locks are needed: aligned 8-byte stores
are atomic on every platform we run on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from edged.ipc.limits import MAX_SOURCES
from edged.ipc.segment import Segment


class Worker(IntEnum):
    """Worker kinds; there is one capture worker per source, one of each other kind."""

    CAPTURE = 0
    INFERENCE = 1
    SINK = 2
    UPLINK = 3

    @property
    def title(self) -> str:
        return self.name.lower()



@dataclass(frozen=True, order=True)
class WorkerId:
    """One worker process: its kind and, for capture, the index of its source."""

    kind: Worker
    index: int = 0

    @property
    def title(self) -> str:
        """Name in logs, process titles and `edged status`: capture, capture-1, inference."""
        return self.kind.title if self.index == 0 else f"{self.kind.title}-{self.index}"

    @property
    def row(self) -> int:
        if self.kind == Worker.CAPTURE:
            return self.index
        return MAX_SOURCES + self.kind - 1


WorkerRef = WorkerId | Worker  # a bare kind means its only (or first) worker
_ROWS = MAX_SOURCES + len(Worker) - 1


def _row(worker: WorkerRef) -> int:
    return (worker if isinstance(worker, WorkerId) else WorkerId(worker)).row


class WorkerState(IntEnum):
    """Lifecycle of a worker as the supervisor sees it (supervisord's states)."""

    STOPPED = 0
    STARTING = 1  # spawned; loading a model / opening a source
    RUNNING = 2  # its work loop is stamping heartbeats
    BACKOFF = 3  # exited unexpectedly; waiting before the next start
    STOPPING = 4  # asked to stop; draining
    EXITED = 5  # stopped after a stop request
    FATAL = 6  # gave up restarting


class Slot(IntEnum):
    """Per-worker words."""

    PID = 0
    STATE = 1  # WorkerState, written by the supervisor
    HEARTBEAT_NS = 2  # monotonic, stamped by the worker's own loop
    PROGRESS = 3  # frames read / inferred / records consumed
    STARTED_NS = 4
    BUSY_SINCE_NS = 5  # inference: when the current run started; 0 when idle
    STOP = 6  # 1 = supervisor asks the worker to finish and exit
    LOOP_READY = 7  # 1 once the worker entered its work loop (model loaded, DB open)
    # Capture workers only (one per source):
    SOURCE_UP = 8  # 1 while the source delivers frames
    RECONNECTS = 9
    SOURCE_FPS_MILLI = 10  # the source's nominal fps x 1000
    SOURCE_ENDED = 11  # 1 once a file source reached its end (or --max-frames)


class Counter(IntEnum):
    """Global counters, each with one writer (named in the comment)."""

    FRAMES_INFERRED = 3  # inference (0-2: per-source words now live in the capture rows)
    INFER_US_TOTAL = 4  # inference: sum of backend time, for interval averages
    INFER_US_LAST = 5  # inference
    RESULTS_EMITTED = 6  # inference: records put on the result ring
    DETECTIONS_EMITTED = 7  # inference
    INPUT_SIZE = 8  # inference: current model input side
    RESULTS_CONSUMED = 9  # sink
    RESULT_OVERFLOWS = 10  # sink: records lost to a full result ring
    EVENTS_COMMITTED = 11  # sink
    ROWS_COMMITTED = 12  # sink
    DB_BYTES = 13  # sink
    CONF_MILLI = 15  # inference: the score threshold in force x 1000
    CONFIG_GENERATION = 16  # supervisor: reloads applied
    FRAMES_PREDICTED = 17  # inference: skipped frames whose boxes the tracker predicted
    # The thermal governor's current mode, written by the supervisor, applied by inference.
    MODE_LEVEL = 18  # 0 high, 1 medium, 2 low, 3 critical
    MODE_INPUT_SIZE = 19
    MODE_FRAME_SKIP = 20
    MODE_CONF_MILLI = 21
    MODE_FPS_MILLI = 22
    MODE_PAUSED = 23
    MODE_TRANSITIONS = 24  # supervisor
    FRAMES_SKIPPED_PAUSED = 25  # inference: frames passed over while paused
    NEXT_TRACK_ID = 26  # inference: a restarted tracker never reuses an id
    OUTBOX_BACKLOG = 40  # uplink: events whose latest state the broker has not acknowledged
    OUTBOX_SENT = 41  # uplink: event messages the broker acknowledged (this uplink process)
    UPLINK_CONNECTED = 42  # uplink: 1 while connected to the broker


class Histogram(IntEnum):
    """Latency histograms, each with one writer (Prometheus reads them at scrape time)."""

    INFERENCE = 0  # inference: backend time of one frame
    END_TO_END = 1  # sink: capture -> handed to the store


# Upper bounds in seconds; one more bucket holds everything above the last.
HISTOGRAM_BOUNDS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_HIST_WORDS = len(HISTOGRAM_BOUNDS_S) + 2  # buckets (+Inf included), sum in µs
_SLOT_WORDS = 16
_COUNTER_WORDS = 64


class ControlBlock:
    def __init__(self, segment: Segment) -> None:
        self.segment = segment
        self._slots = segment.array(np.int64, _ROWS * _SLOT_WORDS, 0).reshape(
            _ROWS, _SLOT_WORDS)
        self._counters = segment.array(np.int64, _COUNTER_WORDS, _ROWS * _SLOT_WORDS * 8)
        self._hist = segment.array(
            np.int64, len(Histogram) * _HIST_WORDS,
            (_ROWS * _SLOT_WORDS + _COUNTER_WORDS) * 8).reshape(len(Histogram), _HIST_WORDS)
        self._bounds_us = np.array([b * 1e6 for b in HISTOGRAM_BOUNDS_S])

    @staticmethod
    def create(name: str) -> Segment:
        words = _ROWS * _SLOT_WORDS + _COUNTER_WORDS + len(Histogram) * _HIST_WORDS
        return Segment.create(name, words * 8)

    def observe(self, histogram: Histogram, micros: int) -> None:
        bucket = int(np.searchsorted(self._bounds_us, micros))  # le semantics: <= bound
        self._hist[histogram, bucket] += 1
        self._hist[histogram, -1] += micros

    def histogram(self, histogram: Histogram) -> tuple[list[int], float]:
        """Cumulative bucket counts (the last is +Inf = the count) and the sum in seconds."""
        row = self._hist[histogram]
        return np.cumsum(row[:-1]).tolist(), float(row[-1]) / 1e6

    def get(self, worker: WorkerRef, slot: Slot) -> int:
        return int(self._slots[_row(worker), slot])

    def set(self, worker: WorkerRef, slot: Slot, value: int) -> None:
        self._slots[_row(worker), slot] = value

    def bump(self, worker: WorkerRef, slot: Slot, delta: int = 1) -> None:
        self._slots[_row(worker), slot] += delta

    def beat(self, worker: WorkerRef, progress: int | None = None) -> None:
        """Called by the worker's own loop each iteration (never by a helper thread)."""
        row = _row(worker)
        self._slots[row, Slot.HEARTBEAT_NS] = time.monotonic_ns()
        if progress is not None:
            self._slots[row, Slot.PROGRESS] = progress

    def state(self, worker: WorkerRef) -> WorkerState:
        return WorkerState(self.get(worker, Slot.STATE))

    def stop_requested(self, worker: WorkerRef) -> bool:
        return bool(self._slots[_row(worker), Slot.STOP])

    def captured(self) -> int:
        """Frames read over all sources (each capture row counts its own)."""
        return int(self._slots[:MAX_SOURCES, Slot.PROGRESS].sum())

    def sources_up(self, count: int) -> list[bool]:
        return [bool(v) for v in self._slots[:count, Slot.SOURCE_UP]]

    def reconnects(self) -> int:
        return int(self._slots[:MAX_SOURCES, Slot.RECONNECTS].sum())

    def counter(self, counter: Counter) -> int:
        return int(self._counters[counter])

    def add(self, counter: Counter, delta: int = 1) -> None:
        self._counters[counter] += delta

    def put(self, counter: Counter, value: int) -> None:
        self._counters[counter] = value

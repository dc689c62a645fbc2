"""Capture worker (one per source): source -> its frame ring, paced like a camera or
lossless for evaluation."""

from __future__ import annotations

import time

import structlog

from edged.ipc.control import ControlBlock, Slot, WorkerId
from edged.ipc.frames import FrameHeader, FrameWriter
from edged.ipc.segment import Segment
from edged.workers.base import StopFlag, WorkerArgs, setup_process
from edged.workers.source import SourceError, VideoSource

log = structlog.get_logger()


class Pacer:
    """Releases frames on an absolute schedule; after a stall it resyncs instead of bursting."""

    def __init__(self, fps: float) -> None:
        self.period = 1.0 / fps
        self._next = time.monotonic()

    def wait(self, stop: StopFlag) -> None:
        now = time.monotonic()
        if self._next - now < -self.period:
            self._next = now
        while (delay := self._next - time.monotonic()) > 0 and not stop:
            time.sleep(min(delay, 0.05))
        self._next += self.period


class Backoff:
    def __init__(self, initial_s: float, max_s: float) -> None:
        self.initial, self.max, self.current = initial_s, max_s, initial_s

    def next_delay(self) -> float:
        delay, self.current = self.current, min(self.current * 2, self.max)
        return delay

    def reset(self) -> None:
        self.current = self.initial


def run(args: WorkerArgs) -> int:
    ctx = setup_process(args)
    index = args.worker.index
    writer = FrameWriter(Segment.attach(args.ipc.frames[index]))
    capture = Capture(args, ctx.control, writer, ctx.stop)
    return capture.loop()


class Capture:
    def __init__(
        self, args: WorkerArgs, control: ControlBlock, writer: FrameWriter, stop: StopFlag
    ) -> None:
        self.me: WorkerId = args.worker
        self.cfg = args.config.sources[self.me.index]
        self.max_frames = args.limits.max_frames
        self.control, self.writer, self.stop = control, writer, stop
        self.source = VideoSource(self.cfg)
        self.backoff = Backoff(self.cfg.reconnect_initial_s, self.cfg.reconnect_max_s)
        self.lossless = self.cfg.kind == "file" and self.cfg.mode == "lossless"
        self.sent = control.get(self.me, Slot.PROGRESS)  # continues after a restart

    def _set(self, slot: Slot, value: int) -> None:
        self.control.set(self.me, slot, value)

    def loop(self) -> int:
        self._set(Slot.LOOP_READY, 1)
        while not self.stop:
            self.control.beat(self.me, self.sent)
            if not self._connect():
                continue
            pacer = Pacer(self.cfg.fps or self.source.nominal_fps)
            self._set(Slot.SOURCE_FPS_MILLI, int(self.source.nominal_fps * 1000))
            if self._stream(pacer) == "ended":
                log.info("capture.source_ended", source=self.source.shown, frames=self.sent)
                self._set(Slot.SOURCE_UP, 0)
                self._set(Slot.SOURCE_ENDED, 1)
                self.source.close()
                return 0
        self.source.close()
        self._set(Slot.SOURCE_UP, 0)
        log.info("capture.stopped", source=self.cfg.name, frames=self.sent)
        return 0

    def _connect(self) -> bool:
        try:
            self.source.open()
        except SourceError as exc:
            delay = self.backoff.next_delay()
            log.warning("capture.reconnecting", source=self.cfg.name, reason=str(exc),
                        retry_in_s=round(delay, 2))
            self._sleep(delay)
            return False
        self.backoff.reset()
        return True

    def _stream(self, pacer: Pacer) -> str:
        """Read until the source fails ("lost"), ends ("ended") or we are told to stop."""
        paced = not self.lossless and (self.cfg.kind == "file" or self.cfg.fps is not None)
        while not self.stop:
            self.control.beat(self.me, self.sent)
            if self.max_frames is not None and self.sent >= self.max_frames:
                return "ended"
            if self.lossless and not self.writer.wait_for_room(0.5, lambda: bool(self.stop)):
                continue  # never decode a frame nobody has room for
            if paced:
                pacer.wait(self.stop)
            try:
                frame = self.source.read()
            except SourceError as exc:
                self._set(Slot.SOURCE_UP, 0)
                self.control.bump(self.me, Slot.RECONNECTS)
                log.warning("capture.source_lost", source=self.cfg.name, reason=str(exc))
                self.source.close()
                return "lost"
            if frame is None:
                if self.cfg.loop and self.source.rewind():
                    continue
                return "ended"
            self.writer.put(frame, FrameHeader(0, time.monotonic_ns(), time.time_ns(),
                                               self.me.index, self.source.position - 1))
            self.sent += 1
            self._set(Slot.SOURCE_UP, 1)
        return "stopped"

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stop and time.monotonic() < deadline:
            self.control.beat(self.me, self.sent)
            time.sleep(min(0.1, seconds))

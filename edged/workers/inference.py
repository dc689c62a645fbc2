"""Inference worker: frame ring -> detector + tracker -> result ring.

Applies the thermal governor's mode each frame without restarting: input size (dynamic
model, or the per-size `models:` list), frame-skip and inference fps cap (the tracker
predicts the frames in between), confidence, and pause at critical.
"""

from __future__ import annotations

import time

import numpy as np
import structlog

from edged.config import Config
from edged.ipc.control import ControlBlock, Counter, Histogram, Slot, Worker
from edged.ipc.frames import FrameHeader, FrameReader
from edged.ipc.results import FrameResult, ResultWriter
from edged.ipc.segment import Segment
from edged.store.snapshots import SnapshotWriter
from edged.vision.detections import Detections
from edged.vision.detector import Detector, filter_detections
from edged.vision.roi import inside_roi
from edged.vision.tracker import Track, Tracker
from edged.workers.base import WorkerArgs, setup_process

log = structlog.get_logger()

_ME = Worker.INFERENCE
_WAIT_S = 0.2  # bounded wait for a frame, so the loop keeps stamping heartbeats


class DetectorPool:
    """One detector per input size, created on first use and kept (switching back is free)."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.base = Detector(cfg.model, cfg.detect)
        self._by_size: dict[int, Detector] = {}  # the per-size `models:` files
        self.dynamic = self.base.backend.input_spec.dynamic

    def get(self, size: int) -> Detector:
        if size <= 0:
            return self.base
        if size in self._by_size:
            return self._by_size[size]
        if size in self.cfg.models:
            model = self.cfg.model.model_copy(update={"path": self.cfg.models[size],
                                                      "input_size": size})
            self._by_size[size] = Detector(model, self.cfg.detect)
            log.info("inference.model_loaded", input_size=size, path=str(model.path))
            return self._by_size[size]
        # One session serves every size of a dynamic-shape model; only buffers change.
        if self.dynamic and self.base.input_size != size:
            self.base.set_input_size(size)
            log.info("inference.input_size", input_size=size)
        return self.base  # fixed shape: the governor sheds load with skip and conf instead


def _as_detections(tracks: list[Track]) -> Detections:
    if not tracks:
        return Detections.empty()
    return Detections(np.stack([t.box for t in tracks]).astype(np.float32),
                      np.array([t.score for t in tracks], np.float32),
                      np.array([t.class_id for t in tracks], np.int32),
                      np.array([t.track_id for t in tracks], np.int32))


class SourceState:
    """What inference keeps per source: its ring, its tracker, its frame-skip count."""

    def __init__(self, index: int, reader: FrameReader, tracker: Tracker) -> None:
        self.index, self.reader, self.tracker = index, reader, tracker
        self.since_inference = 0
        self.last_inference = 0.0


class Inference:
    def __init__(self, args: WorkerArgs, control: ControlBlock, readers: list[FrameReader],
                 writer: ResultWriter) -> None:
        self.cfg = args.config
        self.names = list(args.class_names)
        self.control, self.writer = control, writer
        self.pool = DetectorPool(self.cfg)
        # Ids continue across restarts, so the sink never merges two objects into one event.
        first_id = max(1, control.counter(Counter.NEXT_TRACK_ID))
        self.sources = [SourceState(i, reader, Tracker(self.cfg.tracker, first_id=first_id))
                        for i, reader in enumerate(readers)]
        self.turn = 0
        self.paused = False
        snaps = self.cfg.snapshots
        self.snapshots = SnapshotWriter(snaps, self.cfg.store.event_gap_s) if snaps.enabled \
            else None
        self.conf = self.cfg.detect.conf
        self._publish_conf()

    def reconfigure(self, cfg: Config) -> None:
        self.cfg = cfg
        self.pool.cfg = cfg
        self._publish_conf()
        log.info("inference.settings", conf=self.conf, iou=cfg.detect.iou,
                 classes={s.name: s.classes for s in cfg.sources})

    def _publish_conf(self) -> float:
        """The threshold in force: the configured one, raised by the governor when hot."""
        mode_conf = self.control.counter(Counter.MODE_CONF_MILLI) / 1000
        self.conf = max(self.cfg.detect.conf, mode_conf)
        self.control.put(Counter.CONF_MILLI, round(self.conf * 1000))
        return self.conf

    def step(self) -> bool:
        """Handle at most one frame; False when none came within the wait."""
        control = self.control
        if control.counter(Counter.MODE_PAUSED):
            if not self.paused:
                log.info("inference.paused", reason="thermal critical")
            self.paused = True
            time.sleep(_WAIT_S)  # capture keeps overwriting: only the latest frame survives
            return False
        if self.paused:
            self.paused = False
            for source in self.sources:
                control.add(Counter.FRAMES_SKIPPED_PAUSED, source.reader.ring.skip_to_latest())
            log.info("inference.resumed")
        got = self._next_frame()
        if got is None:
            return False
        source, image, header = got
        if self._due(source):
            self._infer(source, image, header)
        else:
            self._predict(source, header)
        return True

    def _next_frame(self) -> tuple[SourceState, np.ndarray, FrameHeader] | None:
        """Round-robin over the sources, so a busy camera cannot starve a quiet one."""
        deadline = time.monotonic() + _WAIT_S
        count = len(self.sources)
        while True:
            for offset in range(count):
                source = self.sources[(self.turn + offset) % count]
                got = source.reader.get(0.0)
                if got is not None:
                    self.turn = (source.index + 1) % count
                    return source, *got
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.001)

    def _due(self, source: SourceState) -> bool:
        skip = max(1, self.control.counter(Counter.MODE_FRAME_SKIP))
        # A lossless file has no clock: the cap would only turn a backlog into predictions.
        lossless = self.cfg.sources[source.index].mode == "lossless"
        fps_cap = 0.0 if lossless else self.control.counter(Counter.MODE_FPS_MILLI) / 1000
        source.since_inference += 1
        if source.since_inference < skip:
            return False
        return not fps_cap or time.monotonic() - source.last_inference >= 1.0 / fps_cap

    def _infer(self, source: SourceState, image: np.ndarray, header: FrameHeader) -> None:
        control = self.control
        detector = self.pool.get(control.counter(Counter.MODE_INPUT_SIZE))
        conf = self._publish_conf()
        # The detector runs at the tracker's low score: the second pass needs weak boxes.
        detector.set_thresholds(min(conf, self.cfg.tracker.low_score), self.cfg.detect.iou)
        started = time.monotonic_ns()
        control.set(_ME, Slot.BUSY_SINCE_NS, started)
        dets = detector.detect(image)
        infer_us = (time.monotonic_ns() - started) // 1000
        control.set(_ME, Slot.BUSY_SINCE_NS, 0)
        # The fps cap spaces inference *starts*: a backlog in the ring must not look fast.
        source.since_inference, source.last_inference = 0, started / 1e9
        tracks = [t for t in source.tracker.update(dets, high_score=conf) if t.score >= conf]
        control.put(Counter.NEXT_TRACK_ID,
                    max(control.counter(Counter.NEXT_TRACK_ID), source.tracker.next_id))
        emitted = self._emit(source, header, _as_detections(tracks), infer_us,
                             detector.input_size, False)
        if self.snapshots is not None:  # after the put: the result never waits for a JPEG
            self.snapshots.offer(image, header.wall_ns / 1e9,
                                 self.cfg.sources[source.index].name, emitted, self.names)
        control.add(Counter.FRAMES_INFERRED)
        control.add(Counter.INFER_US_TOTAL, infer_us)
        control.put(Counter.INFER_US_LAST, infer_us)
        control.put(Counter.INPUT_SIZE, detector.input_size)
        control.observe(Histogram.INFERENCE, infer_us)

    def _predict(self, source: SourceState, header: FrameHeader) -> None:
        tracks = [t for t in source.tracker.predict() if t.score >= self.conf]
        self._emit(source, header, _as_detections(tracks), 0, 0, True)
        self.control.add(Counter.FRAMES_PREDICTED)

    def _emit(self, source: SourceState, header: FrameHeader, dets: Detections, infer_us: int,
              size: int, predicted: bool) -> Detections:
        src = self.cfg.sources[source.index]
        dets = filter_detections(dets, self.names, src.classes, src.min_score)
        if src.roi is not None:
            dets = dets.select(inside_roi(dets.boxes, src.roi))
        self.writer.put(FrameResult(header.item, header.capture_mono_ns, header.wall_ns,
                                    header.source_index, header.position, infer_us, size, dets,
                                    predicted))
        self.control.add(Counter.RESULTS_EMITTED)
        self.control.add(Counter.DETECTIONS_EMITTED, len(dets))
        return dets


def run(args: WorkerArgs) -> int:
    ctx = setup_process(args)
    control, stop = ctx.control, ctx.stop
    readers = [FrameReader(Segment.attach(name)) for name in args.ipc.frames]
    writer = ResultWriter(Segment.attach(args.ipc.results))
    inference = Inference(args, control, readers, writer)
    control.put(Counter.INPUT_SIZE, inference.pool.base.input_size)
    control.set(_ME, Slot.LOOP_READY, 1)
    log.info("inference.ready", input_size=inference.pool.base.input_size,
             dynamic=inference.pool.dynamic, classes=len(inference.names))
    handled = 0
    while True:
        control.beat(_ME, handled)
        if (new := ctx.reloads.poll()) is not None:
            inference.reconfigure(new)
        if stop and not stop.drain:
            break  # the frame in hand (if any) was finished in the previous step
        if inference.step():
            handled += 1
        elif stop:
            break  # draining and the ring is empty
    inferred = control.counter(Counter.FRAMES_INFERRED)
    mean_ms = control.counter(Counter.INFER_US_TOTAL) / inferred / 1000 if inferred else None
    log.info("inference.stopped", inferred=inferred,
             infer_ms_mean=None if mean_ms is None else round(mean_ms, 2),
             predicted=control.counter(Counter.FRAMES_PREDICTED),
             results_emitted=control.counter(Counter.RESULTS_EMITTED),
             detections_emitted=control.counter(Counter.DETECTIONS_EMITTED))
    return 0

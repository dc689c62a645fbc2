"""Inference worker: frame ring -> detector -> result ring."""

from __future__ import annotations

import time

import structlog

from edged.ipc.control import Counter, Slot, Worker
from edged.ipc.frames import FrameReader
from edged.ipc.results import FrameResult, ResultWriter
from edged.ipc.segment import Segment
from edged.vision.detector import Detector, filter_detections
from edged.workers.base import WorkerArgs, setup_process

log = structlog.get_logger()

_ME = Worker.INFERENCE
_WAIT_S = 0.2  # bounded wait for a frame, so the loop keeps stamping heartbeats


def run(args: WorkerArgs) -> int:
    control, stop = setup_process(args)
    reader = FrameReader(Segment.attach(args.ipc.frames))
    writer = ResultWriter(Segment.attach(args.ipc.results))
    cfg = args.config
    detector = Detector(cfg.model, cfg.detect)
    control.put(Counter.INPUT_SIZE, detector.input_size)
    names = list(args.class_names)
    classes, min_score = cfg.source.classes, cfg.source.min_score
    control.set(_ME, Slot.LOOP_READY, 1)
    log.info("inference.ready", input_size=detector.input_size, classes=len(names))

    inferred = 0
    while True:
        control.beat(_ME, inferred)
        if stop and not stop.drain:
            break  # the frame in hand (if any) was finished in the previous iteration
        got = reader.get(_WAIT_S)
        if got is None:
            if stop:
                break  # draining and the ring is empty
            continue  # starved, not stalled: the heartbeat above keeps flowing
        image, header = got
        started = time.monotonic_ns()
        control.set(_ME, Slot.BUSY_SINCE_NS, started)
        dets = detector.detect(image)
        infer_us = (time.monotonic_ns() - started) // 1000
        control.set(_ME, Slot.BUSY_SINCE_NS, 0)
        dets = filter_detections(dets, names, classes, min_score)
        writer.put(FrameResult(header.item, header.capture_mono_ns, header.wall_ns,
                               header.source_index, header.position, infer_us,
                               detector.input_size, dets))
        inferred += 1
        control.add(Counter.FRAMES_INFERRED)
        control.add(Counter.INFER_US_TOTAL, infer_us)
        control.put(Counter.INFER_US_LAST, infer_us)
        control.add(Counter.RESULTS_EMITTED)
        control.add(Counter.DETECTIONS_EMITTED, len(dets))
    log.info("inference.stopped", inferred=inferred,
             results_emitted=control.counter(Counter.RESULTS_EMITTED),
             detections_emitted=control.counter(Counter.DETECTIONS_EMITTED))
    return 0

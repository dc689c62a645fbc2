"""Sink worker: result ring -> SQLite events, in batched transactions."""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from edged.ipc.control import ControlBlock, Counter, Histogram, Slot, Worker
from edged.ipc.results import ResultReader
from edged.ipc.segment import Segment
from edged.store import StoreError
from edged.store.events import EventStore
from edged.store.snapshots import SnapshotStore
from edged.workers.base import WorkerArgs, setup_process

log = structlog.get_logger()

_ME = Worker.SINK
_WAIT_S = 0.05
_PRUNE_EVERY_S = 600.0


def run(args: WorkerArgs) -> int:
    ctx = setup_process(args)
    control, stop = ctx.control, ctx.stop
    reader = ResultReader(Segment.attach(args.ipc.results))
    cfg = args.config
    snapshots = SnapshotStore(cfg.snapshots) if cfg.snapshots.enabled else None
    store = EventStore.open(cfg.store.path, cfg.store, snapshots)  # StoreError: exit 69
    names = list(args.class_names)
    sources = [src.name for src in cfg.sources]
    control.set(_ME, Slot.LOOP_READY, 1)
    consumed = control.counter(Counter.RESULTS_CONSUMED)
    overflows_seen = reader.ring.drops
    next_prune = 0.0
    try:
        while True:
            control.beat(_ME, consumed)
            if (new := ctx.reloads.poll()) is not None:
                sources = [src.name for src in new.sources]
                store.reconfigure(new.store)
                next_prune = 0.0  # a lowered size cap takes effect now, not in 10 minutes
            now = time.monotonic()
            if now >= next_prune:
                next_prune = now + _PRUNE_EVERY_S
                _guarded(store.prune, time.time())
            result = reader.get(_WAIT_S)
            if result is not None:
                store.add_frame(sources[result.source_index], result.frame_item,
                                result.wall_ns / 1e9, result.detections, names,
                                predicted=result.predicted)
                consumed += 1
                control.put(Counter.RESULTS_CONSUMED, consumed)
                control.observe(Histogram.END_TO_END,
                                (time.monotonic_ns() - result.capture_mono_ns) // 1000)
            elif stop:
                break  # stop only once the ring is empty: nothing emitted is lost
            if reader.ring.drops != overflows_seen:
                lost = reader.ring.drops - overflows_seen
                overflows_seen = reader.ring.drops
                control.add(Counter.RESULT_OVERFLOWS, lost)
                log.error("sink.results_overflowed", lost=lost, total=overflows_seen)
                store.add_system_event("error", what="result ring overflow", lost=lost)
            if _guarded(store.commit_due, time.monotonic()):
                _publish(control, store)
    finally:
        try:
            store.close()
        except StoreError as exc:  # still locked or full after close()'s own wait
            log.error("sink.close_failed", error=str(exc), buffered=store.stats()["buffered_rows"])
        _publish(control, store)
    log.info("sink.stopped", results_consumed=consumed,
             events=control.counter(Counter.EVENTS_COMMITTED))
    return 0


def _guarded(step: Callable[[float], int], arg: float) -> int:
    """Run a store step; a failure is logged and retried later, never fatal to the loop."""
    try:
        return int(step(arg))
    except StoreError as exc:
        log.error("sink.store_failed", step=getattr(step, "__name__", "?"), error=str(exc))
        return 0


def _publish(control: ControlBlock, store: EventStore) -> None:
    control.put(Counter.EVENTS_COMMITTED, store.committed_events)
    control.put(Counter.ROWS_COMMITTED, store.rows_committed)
    control.put(Counter.DB_BYTES, int(store.stats()["db_bytes"] or 0))

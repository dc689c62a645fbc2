"""Prometheus endpoint: a collector that reads the control block at scrape time.

Nothing is pushed or copied on the hot path: workers bump their counters and histogram
buckets in shared memory as they already do, and a scrape turns those words into metric
families (prometheus-client's custom-collector pattern). Served by the supervisor on
127.0.0.1 by default.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING

import structlog
from prometheus_client import start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from edged.governor import LEVELS
from edged.ipc.control import (
    HISTOGRAM_BOUNDS_S,
    ControlBlock,
    Counter,
    Histogram,
    Slot,
    Worker,
    WorkerId,
)
from edged.ipc.ring import Ring
from edged.status import frame_drops

if TYPE_CHECKING:
    from edged.governor_loop import GovernorLoop
    from edged.watchdog import WorkerProcess

log = structlog.get_logger()


class PipelineCollector(Collector):
    def __init__(self, control: ControlBlock, frames: list[Ring], governor: GovernorLoop,
                 workers: Callable[[], Mapping[WorkerId, WorkerProcess]],
                 source_names: Callable[[], list[str]]) -> None:
        self.control, self.frames, self.governor = control, frames, governor
        self.workers = workers
        self.source_names = source_names

    def collect(self) -> Iterator[Metric]:
        c = self.control
        yield from (
            _counter("edged_frames_inferred_total", "Frames run through the model.",
                     c.counter(Counter.FRAMES_INFERRED)),
            _counter("edged_frames_predicted_total",
                     "Skipped frames whose boxes the tracker predicted.",
                     c.counter(Counter.FRAMES_PREDICTED)),
            _counter("edged_detections_total", "Detections handed to the sink.",
                     c.counter(Counter.DETECTIONS_EMITTED)),
            _counter("edged_events_written_total",
                     "Events inserted by the current sink process.",
                     c.counter(Counter.EVENTS_COMMITTED)),
            _counter("edged_thermal_mode_changes_total", "Governor mode changes.",
                     c.counter(Counter.MODE_TRANSITIONS)),
        )
        dropped = CounterMetricFamily("edged_queue_dropped_total",
                                      "Items overwritten before being read, per queue.",
                                      labels=["queue"])
        dropped.add_metric(["frames"], frame_drops(self.frames))
        dropped.add_metric(["results"], c.counter(Counter.RESULT_OVERFLOWS))
        yield dropped
        yield _histogram("edged_inference_seconds", "Model time per inferred frame.",
                         *c.histogram(Histogram.INFERENCE))
        yield _histogram("edged_end_to_end_seconds",
                         "From capture to the sink, per frame.",
                         *c.histogram(Histogram.END_TO_END))
        yield from self._workers()
        yield from self._thermal()
        yield from self._sources()
        yield _gauge("edged_model_input_size_pixels", "Current model input side.",
                     c.counter(Counter.INPUT_SIZE))
        yield _gauge("edged_db_size_bytes", "Event database size (file + WAL).",
                     c.counter(Counter.DB_BYTES))
        if any(wid.kind == Worker.UPLINK for wid in self.workers()):
            yield _gauge("edged_outbox_backlog_events", "Events waiting to be sent upstream.",
                         c.counter(Counter.OUTBOX_BACKLOG))
            yield _gauge("edged_uplink_connected", "1 while the MQTT broker is connected.",
                         c.counter(Counter.UPLINK_CONNECTED))
            yield _counter("edged_events_sent_total",
                           "Events acknowledged by the broker (this uplink process).",
                           c.counter(Counter.OUTBOX_SENT))

    def _sources(self) -> Iterator[Metric]:
        captured = CounterMetricFamily("edged_frames_captured",
                                       "Frames read from each source.", labels=["source"])
        reconnects = CounterMetricFamily("edged_source_reconnects",
                                         "Times each source was lost.", labels=["source"])
        up = GaugeMetricFamily("edged_source_up", "1 while the source delivers frames.",
                               labels=["source"])
        for index, name in enumerate(self.source_names()):
            wid = WorkerId(Worker.CAPTURE, index)
            captured.add_metric([name], self.control.get(wid, Slot.PROGRESS))
            reconnects.add_metric([name], self.control.get(wid, Slot.RECONNECTS))
            up.add_metric([name], self.control.get(wid, Slot.SOURCE_UP))
        yield from (captured, reconnects, up)

    def _workers(self) -> Iterator[Metric]:
        restarts = CounterMetricFamily("edged_worker_restarts_total",
                                       "Worker restarts by worker and reason.",
                                       labels=["worker", "reason"])
        up = GaugeMetricFamily("edged_worker_up", "1 while the worker runs.", labels=["worker"])
        for wid, worker in self.workers().items():
            for reason, count in sorted(worker.restarts_by_reason.items()):
                restarts.add_metric([wid.title, reason], count)
            up.add_metric([wid.title], float(worker.state.name == "RUNNING"))
        yield restarts
        yield up

    def _thermal(self) -> Iterator[Metric]:
        temps = GaugeMetricFamily("edged_temperature_celsius", "Temperature per zone.",
                                  labels=["zone"])
        for reading in self.governor.readings:
            temps.add_metric([reading.zone], reading.celsius)
        yield temps
        mode = GaugeMetricFamily("edged_thermal_mode", "1 for the governor's current mode.",
                                 labels=["mode"])
        current = self.governor.mode_name
        for name in LEVELS:
            mode.add_metric([name], float(name == current))
        yield mode


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    # prometheus-client appends _total itself when exposing a counter family.
    return CounterMetricFamily(name.removesuffix("_total"), doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _histogram(name: str, doc: str, cumulative: list[int], sum_s: float) -> Metric:
    bounds = [*(str(b) for b in HISTOGRAM_BOUNDS_S), "+Inf"]
    return HistogramMetricFamily(name, doc, buckets=list(zip(bounds, cumulative, strict=True)),
                                 sum_value=sum_s)


def serve(collector: PipelineCollector, host: str, port: int) -> None:
    """Start the endpoint in a daemon thread of the supervisor."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    start_http_server(port, addr=host, registry=registry)
    log.info("metrics.serving", url=f"http://{host}:{port}/metrics")

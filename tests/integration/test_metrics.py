"""The Prometheus endpoint during a real run: counters move, histograms fill, names conform."""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import Daemon, _free_port

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _scrape(port: int) -> dict[str, float]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(body):
        assert re.fullmatch(r"edged_[a-z0-9_]+", family.name), family.name
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples)
        if family.type == "histogram":
            assert family.name.endswith("_seconds"), "durations are in base units"
        values.setdefault(f"family:{family.name}", 0.0)  # present even with no samples yet
        for sample in family.samples:
            key = sample.name + "".join(f",{k}={v}" for k, v in sorted(sample.labels.items()))
            values[key] = sample.value
    return values


def test_metrics_move_during_a_run(
    pipeline_config: Callable[..., Path], daemons: list[Daemon]
) -> None:
    port = _free_port()
    config = pipeline_config(source={"mode": "paced", "loop": True},
                             metrics={"enabled": True, "port": port})
    daemon = Daemon(config)
    daemons.append(daemon)
    daemon.wait_for(lambda: bool(daemon.find("metrics.serving")), 60, "metrics endpoint")
    daemon.wait_for(lambda: bool(daemon.find("supervisor.ready")), 60, "first inference")
    first = _scrape(port)
    seen = len(daemon.find("status"))
    daemon.wait_for(lambda: len(daemon.find("status")) >= seen + 3, 60, "more frames")
    second = _scrape(port)
    for name in ("edged_frames_captured_total,source=vtest", "edged_frames_inferred_total",
                 "edged_detections_total"):
        assert second[name] > first[name], name
    assert second["edged_events_written_total"] > 0
    assert second["edged_inference_seconds_count"] > 0
    assert second["edged_inference_seconds_sum"] > 0
    assert second["edged_end_to_end_seconds_count"] > 0
    assert second["edged_thermal_mode,mode=high"] == 1.0
    assert second["edged_source_up,source=vtest"] == 1.0
    assert second["edged_worker_up,worker=inference"] == 1.0
    assert "edged_queue_dropped_total,queue=frames" in second
    assert second["edged_db_size_bytes"] > 0
    # Every series the shipped Grafana dashboard queries exists (the uplink ones need mqtt).
    dashboard = (ROOT / "packaging" / "grafana-dashboard.json").read_text()
    families = {key.removeprefix("family:") for key in second if key.startswith("family:")}
    for name in set(re.findall(r"edged_[a-z_]+", dashboard)) - {"edged_outbox_backlog_events"}:
        family = re.sub(r"_(bucket|sum|count|total)$", "", name)
        assert family in families, f"dashboard queries {name}, which edged does not export"
    daemon.proc.terminate()
    assert daemon.wait(30) == 0

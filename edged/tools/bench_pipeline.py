"""`edged bench pipeline`: the whole daemon on a video file, once per thermal mode.

Each run is a real `edged run --max-frames N` in lossless mode (every frame handled, so runs
are comparable) with the mode's input size, frame-skip and confidence pinned. Reported per
mode: pipeline fps, inferences per second, mean inference ms, CPU % of the process tree
(100 % = one core) and the peak RSS of each process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import yaml

from edged.config import Config
from edged.governor_config import MODE_ORDER

_SAMPLE_S = 0.2


def _mode_config(config: Config, mode: str, video: Path, db: Path, threads: int) -> dict:
    settings = next(m for m in config.thermal.modes if m.name == mode)
    doc = json.loads(config.model_dump_json())
    doc["sources"] = [{**doc["sources"][0], "uri": str(video), "mode": "lossless",
                       "loop": False, "fps": None, "roi": None}]
    doc["model"].update(input_size=settings.input_size, intra_op_threads=threads)
    doc["store"]["path"] = str(db)
    doc["logging"] = {"format": "json", "level": "info"}
    doc["daemon"]["runtime_dir"] = str(db.parent / "run")
    # Every rung of the ladder = this mode, no load shedding: the mode is pinned.
    doc["thermal"]["modes"] = [{**settings.model_dump(), "name": name} for name in MODE_ORDER]
    doc["thermal"]["load_shedding"] = False
    doc["thermal"]["sysfs_root"] = str(db.parent / "no-sensors")
    return doc


def _watch(proc: subprocess.Popen[bytes]) -> tuple[float, dict[str, int]]:
    """CPU seconds of the whole tree and the peak RSS per process title, until exit."""
    root = psutil.Process(proc.pid)
    cpu: dict[int, float] = {}
    rss: dict[int, int] = {}
    names: dict[int, str] = {}
    while proc.poll() is None:
        with_children = [root]
        try:
            with_children += root.children(recursive=True)
        except psutil.NoSuchProcess:
            break
        for p in with_children:
            try:
                with p.oneshot():
                    times = p.cpu_times()
                    cpu[p.pid] = times.user + times.system
                    title = " ".join(p.cmdline()).strip()
                    if title.startswith("edged: "):  # a worker's title, once it has set it
                        names[p.pid] = title.split(": ", 1)[1]
                    elif p.pid == proc.pid:
                        names[p.pid] = "supervisor"
                    elif "resource_tracker" in title:
                        names[p.pid] = "resource_tracker"
                    rss[p.pid] = max(rss.get(p.pid, 0), p.memory_info().rss)
            except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                continue
        time.sleep(_SAMPLE_S)
    by_name: dict[str, int] = {}
    for pid, value in rss.items():
        name = names.get(pid, "other")
        by_name[name] = max(by_name.get(name, 0), value)
    return sum(cpu.values()), by_name


def bench_mode(config: Config, mode: str, video: Path, frames: int, threads: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="edged-bench-") as tmp:
        path = Path(tmp) / "edged.yaml"
        path.write_text(yaml.safe_dump(
            _mode_config(config, mode, video, Path(tmp) / "events.db", threads)))
        started = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "edged", "run", "--config", str(path),
                                 "--max-frames", str(frames)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        cpu_s, rss = _watch(proc)
        output = proc.communicate()[0].decode(errors="replace")
        wall = time.monotonic() - started
    events = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    stopped = next((e for e in events if e.get("event") == "inference.stopped"), None)
    ready = next((e for e in events if e.get("event") == "inference.ready"), None)
    if proc.returncode != 0 or stopped is None or ready is None:
        raise RuntimeError(f"mode {mode}: edged run exited {proc.returncode}:\n{output[-2000:]}")
    # Throughput counts from the first loaded model to the end, not interpreter start-up.
    span = wall - _seconds_before(events, ready)
    settings = next(m for m in config.thermal.modes if m.name == mode)
    handled = stopped["inferred"] + stopped["predicted"]
    return {
        "mode": mode, "input_size": settings.input_size, "frame_skip": settings.frame_skip,
        "conf": settings.conf, "frames": handled, "inferred": stopped["inferred"],
        "pipeline_fps": round(handled / span, 2),
        "inferences_per_s": round(stopped["inferred"] / span, 2),
        "infer_ms_mean": stopped.get("infer_ms_mean"),
        "cpu_percent": round(100 * cpu_s / wall, 1),
        "rss_mb": {name: round(value / 2**20, 1) for name, value in sorted(rss.items())},
        "wall_s": round(wall, 2),
    }


def _seconds_before(events: list[dict[str, Any]], marker: dict[str, Any]) -> float:
    from datetime import datetime

    stamps = [datetime.fromisoformat(e["timestamp"]) for e in events if "timestamp" in e]
    return (datetime.fromisoformat(marker["timestamp"]) - min(stamps)).total_seconds()


def bench_pipeline(config: Config, modes: list[str], video: Path, frames: int,
                   threads: int) -> dict[str, Any]:
    from edged.tools.bench import machine_facts

    return {"kind": "pipeline", "video": str(video), "threads": threads,
            "machine": machine_facts(),
            "modes": [bench_mode(config, mode, video, frames, threads) for mode in modes]}


def format_pipeline_table(result: dict[str, Any]) -> str:
    lines = [f"{'mode':<8}{'size':>6}{'skip':>6}{'fps':>8}{'inf/s':>8}{'inf ms':>8}"
             f"{'cpu %':>8}  rss MB"]
    for m in result["modes"]:
        rss = " ".join(f"{k}={v:.0f}" for k, v in m["rss_mb"].items())
        lines.append(f"{m['mode']:<8}{m['input_size']:>6}{m['frame_skip']:>6}"
                     f"{m['pipeline_fps']:>8.1f}{m['inferences_per_s']:>8.1f}"
                     f"{m['infer_ms_mean'] or 0:>8.1f}{m['cpu_percent']:>8.1f}  {rss}")
    return "\n".join(lines)

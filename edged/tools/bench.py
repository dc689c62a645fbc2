"""Model benchmark: inference latency per input size, plus where the rest of a frame goes.

`bench_model` returns plain JSON-serialisable data; `format_bench_table` renders it for a
terminal. Nothing here asserts on speed: numbers are for people and for bench/results/.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import psutil

from edged.backends.base import Backend
from edged.config import DetectConfig, ModelConfig
from edged.vision.decode import decode, resolve_layout
from edged.vision.detector import create_backend
from edged.vision.letterbox import Letterboxer
from edged.vision.nms import nms

SYNTHETIC_SHAPE = (720, 1280, 3)


def bench_model(
    model: ModelConfig,
    sizes: list[int],
    runs: int,
    warmup: int,
    image: Path | None,
    *,
    detect: DetectConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Time `runs` inferences per input size after `warmup` untimed ones.

    `progress(done, total)` is called after each timed inference (all sizes together).

    `image` None uses a seeded noise frame (inference time does not depend on content, but
    decode + NMS does: pass a real photo to see it). A fixed-size model only accepts its own
    size in `sizes` (ValueError otherwise). Raises ModelUnavailable like the daemon does.
    """
    if runs < 1 or warmup < 0 or not sizes:
        raise ValueError("need runs >= 1, warmup >= 0 and at least one size")
    detect = detect or DetectConfig()
    frame, image_info = _frame(image)
    backend = create_backend(model)
    backend.load()
    layout_hint = backend.metadata.get("layout")
    total, done = runs * len(sizes), [0]

    def tick() -> None:
        done[0] += 1
        if progress is not None and done[0] <= total:
            progress(done[0], total)

    results = [
        _bench_size(backend, frame, size, runs, warmup, detect, layout_hint, tick)
        for size in sizes
    ]
    described = backend.describe()
    return {
        "model": str(model.path),
        "model_bytes": Path(model.path).stat().st_size,
        "image": image_info,
        "runs": runs,
        "warmup": warmup,
        "conf": detect.conf,
        "iou": detect.iou,
        "backend": described,
        "machine": machine_facts(),
        "provider": described.get("providers", ["?"])[0],
        "intra_op_threads": model.intra_op_threads,
        "inter_op_threads": model.inter_op_threads,
        "sizes": results,
    }


def _bench_size(
    backend: Backend,
    frame: np.ndarray,
    size: int,
    runs: int,
    warmup: int,
    detect: DetectConfig,
    layout_hint: str | None,
    tick: Callable[[], None],
) -> dict[str, Any]:
    backend.set_input_size(size)
    letterboxer = Letterboxer(size)
    letterbox = _stats(_timed(lambda: letterboxer.letterbox(frame), runs, warmup))
    tensor = letterboxer.tensor
    output = backend.infer(tensor)
    warmed = [0]

    def timed_infer() -> None:
        backend.infer(tensor)
        warmed[0] += 1
        if warmed[0] > warmup:
            tick()

    infer = _stats(_timed(timed_infer, runs, warmup))
    layout = resolve_layout(output.shape, layout_hint)

    def post() -> int:
        cand = decode(output, detect.conf, layout)
        return len(nms(cand.boxes, cand.scores, cand.class_ids, detect.iou, detect.max_det))

    post_stats = _stats(_timed(post, runs, warmup))
    pipeline_ms = letterbox["mean_ms"] + infer["mean_ms"] + post_stats["mean_ms"]
    return {
        "size": size,
        **infer,
        "fps": round(1000.0 / infer["mean_ms"], 2),
        "letterbox_ms": letterbox,
        "decode_nms_ms": post_stats,
        "pipeline_ms": round(pipeline_ms, 3),
        "pipeline_fps": round(1000.0 / pipeline_ms, 2),
        "layout": layout,
        "candidates": len(decode(output, detect.conf, layout)),
        "detections": post(),
    }


def machine_facts() -> dict[str, Any]:
    import onnxruntime

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 0
    return {
        "cpu_model": _cpu_model(),
        "arch": platform.machine(),
        "cores_logical": os.cpu_count(),
        "cores_physical": psutil.cpu_count(logical=False),
        "cores_usable": usable,
        "memory_mb": round(psutil.virtual_memory().total / 2**20),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
        "opencv": cv2.__version__,
    }


def format_bench_table(result: dict[str, Any]) -> str:
    """A terminal table of a `bench_model` result."""
    machine = result["machine"]
    threads = f"intra={result['intra_op_threads']} inter={result['inter_op_threads']}"
    lines = [
        f"model  {result['model']}  ({result['model_bytes'] / 2**20:.1f} MiB)",
        f"cpu    {machine['cpu_model']} ({machine['arch']}, "
        f"{machine['cores_usable']} usable cores)",
        f"ort    {machine['onnxruntime']}  {result['provider']}  threads {threads}",
        f"image  {result['image']['source']}  {result['image']['width']}x"
        f"{result['image']['height']}  runs {result['runs']} (+{result['warmup']} warm-up)",
        "",
        f"{'size':>5}  {'infer ms':>16}  {'p50':>7}  {'p95':>7}  {'fps':>7}  "
        f"{'letterbox':>9}  {'decode+nms':>10}  {'pipeline fps':>12}  {'dets':>4}",
    ]
    for row in result["sizes"]:
        lines.append(
            f"{row['size']:>5}  {row['mean_ms']:>8.2f} ± {row['std_ms']:<5.2f}  "
            f"{row['p50_ms']:>7.2f}  {row['p95_ms']:>7.2f}  {row['fps']:>7.1f}  "
            f"{row['letterbox_ms']['mean_ms']:>9.2f}  {row['decode_nms_ms']['mean_ms']:>10.2f}  "
            f"{row['pipeline_fps']:>12.1f}  {row['detections']:>4}"
        )
    return "\n".join(lines)


def _timed(fn: Callable[[], object], runs: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    return times


def _stats(times_ms: list[float]) -> dict[str, float]:
    ordered = np.asarray(times_ms)
    return {
        "mean_ms": round(statistics.fmean(times_ms), 3),
        "std_ms": round(statistics.pstdev(times_ms), 3),
        "p50_ms": round(float(np.percentile(ordered, 50)), 3),
        "p95_ms": round(float(np.percentile(ordered, 95)), 3),
        "min_ms": round(min(times_ms), 3),
        "max_ms": round(max(times_ms), 3),
    }


def _frame(image: Path | None) -> tuple[np.ndarray, dict[str, Any]]:
    if image is None:
        frame = np.random.default_rng(0).integers(0, 256, SYNTHETIC_SHAPE, np.uint8)
        source = "synthetic noise"
    else:
        # Checked first: cv2.imread would print its own warning for a missing file.
        loaded = cv2.imread(str(image)) if Path(image).is_file() else None
        if loaded is None:
            raise ValueError(f"cannot read image {image}; give a JPEG or PNG file")
        frame, source = loaded, str(image)
    return frame, {"source": source, "width": frame.shape[1], "height": frame.shape[0]}


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    # x86 says "model name"; Raspberry Pi and Jetson kernels say "Model" or "Hardware".
    for key in ("model name", "Model", "Hardware", "cpu model"):
        for line in text.splitlines():
            name, _, value = line.partition(":")
            if name.strip() == key and value.strip():
                return value.strip()
    return platform.processor() or platform.machine()

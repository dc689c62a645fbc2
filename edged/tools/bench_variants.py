"""`edged bench model --variants fp32,int8-dynamic,int8-static,ncnn[,trt-fp16]`.

Every variant of one model is timed on the same letterboxed frame with the same harness as
`edged bench model`, and scored for agreement with FP32 by the same code as `edged eval`.
The runs are interleaved (one inference of each variant per round, the order rotating), so
load from other processes on a shared machine lands on every variant alike instead of on
whichever ran while it happened. Missing artifacts are built first (quantized models,
NCNN twins), with the same functions as `edged quantize` / `edged model convert-ncnn`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from edged.backends.base import Backend
from edged.backends.select import create_backend, ncnn_twin
from edged.config import ModelConfig
from edged.tools.bench import _frame, _stats, machine_facts
from edged.tools.eval import Frames, run_detector, score
from edged.vision.letterbox import Letterboxer

log = structlog.get_logger(__name__)

KNOWN = ("fp32", "int8-dynamic", "int8-static", "ncnn", "trt-fp32", "trt-fp16", "trt-int8")


@dataclass(frozen=True)
class Variant:
    name: str
    model: ModelConfig


def variant_config(base: ModelConfig, name: str, path: Path | None = None) -> ModelConfig:
    """The ModelConfig that runs `name` of `base` (an FP32 ONNX model); `path` overrides
    where a quantized variant lives (default `<stem>.<name>.onnx` beside the model)."""
    if name == "fp32":
        return base.model_copy(update={"backend": "onnxruntime"})
    if name in ("int8-dynamic", "int8-static"):
        out = path or Path(base.path).with_name(f"{Path(base.path).stem}.{name}.onnx")
        return base.model_copy(update={"backend": "onnxruntime", "path": out})
    if name == "ncnn":
        return base.model_copy(update={"backend": "ncnn"})
    if name.startswith("trt-"):
        return base.model_copy(update={"backend": "tensorrt", "trt_precision": name[4:]})
    raise ValueError(f"unknown variant {name!r}; known: {', '.join(KNOWN)}")


def prepare(base: ModelConfig, names: list[str], sizes: list[int],
            calibration: Frames | None, rebuild: bool = False,
            paths: dict[str, Path] | None = None) -> list[Variant]:
    """Variant configs, building quantized models and NCNN twins that are missing."""
    from edged.tools.ncnn_convert import convert_ncnn
    from edged.tools.quantize import QuantizeError, quantize

    variants = []
    for name in names:
        cfg = variant_config(base, name, (paths or {}).get(name))
        if name.startswith("int8-") and (rebuild or not Path(cfg.path).is_file()):
            mode = "dynamic" if name == "int8-dynamic" else "static"
            if mode == "static" and calibration is None:
                raise QuantizeError(f"{cfg.path} is missing and no calibration frames were "
                                    "given (--calib-video/--calib-images, or edged quantize)")
            quantize(Path(base.path), Path(cfg.path), mode, calibration=calibration,
                     size=max(sizes))
        if name == "ncnn":
            missing = [s for s in sizes if rebuild or ncnn_twin(Path(base.path), s) is None]
            if missing:
                convert_ncnn(Path(base.path), missing)
        variants.append(Variant(name, cfg))
    return variants


def bench_variants(
    base: ModelConfig, names: list[str], sizes: list[int], runs: int, warmup: int,
    image: Path | None, *, calibration: Frames | None = None, eval_frames: Frames | None = None,
    rebuild: bool = False, paths: dict[str, Path] | None = None,
) -> dict[str, Any]:
    """Time and score every variant at every size; plain JSON-serialisable data."""
    if runs < 1 or warmup < 0 or not sizes or not names:
        raise ValueError("need runs >= 1, warmup >= 0, a size and a variant")
    variants = prepare(base, names, sizes, calibration, rebuild, paths)
    frame, image_info = _frame(image)
    backends: dict[str, Backend] = {}
    for v in variants:
        # Opened at the first size: an NCNN variant has no twin at sizes it was not asked for.
        backends[v.name] = create_backend(v.model.model_copy(update={"input_size": sizes[0]}))
        backends[v.name].load()
    results = []
    for size in sizes:
        times = _interleaved(backends, frame, size, runs, warmup)
        agreement = _agreement(variants, size, eval_frames) if eval_frames else {}
        rows = []
        base_p50 = _stats(times["fp32"])["p50_ms"] if "fp32" in times else None
        for v in variants:
            stats = _stats(times[v.name])
            rows.append({
                "variant": v.name, **stats, "fps": round(1000.0 / stats["mean_ms"], 2),
                "speedup_p50": round(base_p50 / stats["p50_ms"], 3) if base_p50 else None,
                "bytes": artifact_bytes(v, size),
                "agreement": agreement.get(v.name),
            })
        results.append({"size": size, "rows": rows, "times_ms": times})
    return {
        "model": str(base.path),
        "variants": [{"name": v.name, "path": str(v.model.path),
                      "backend": backends[v.name].describe()} for v in variants],
        "image": image_info, "runs": runs, "warmup": warmup,
        "interleaved": True,
        "threads": base.intra_op_threads,
        "agreement_reference": "fp32 ONNX Runtime at the same size; pseudo-labels = its "
                               "detections at conf >= 0.25 (no ground truth)",
        "eval_frames": eval_frames.ids if eval_frames else [],
        "calibration_frames": calibration.ids if calibration else [],
        "machine": machine_facts(),
        "sizes": results,
    }


def artifact_bytes(variant: Variant, size: int) -> int | None:
    path = Path(variant.model.path)
    if variant.name == "ncnn":
        param = ncnn_twin(path, size)
        return param.with_suffix(".bin").stat().st_size if param else None
    if variant.name.startswith("trt-"):
        return None  # engines live in the cache; `edged build-engine` reports their size
    return path.stat().st_size if path.is_file() else None


def _interleaved(backends: dict[str, Backend], frame: np.ndarray, size: int, runs: int,
                 warmup: int) -> dict[str, list[float]]:
    letterboxer = Letterboxer(size)
    letterboxer.letterbox(frame)
    tensor = letterboxer.tensor
    names = list(backends)
    for name in names:
        backends[name].set_input_size(size)
        for _ in range(warmup):
            backends[name].infer(tensor)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(runs):
        # Rotate who goes first: a variant that always follows another would inherit its
        # cache state and any frequency ramp.
        for name in names[r % len(names):] + names[: r % len(names)]:
            start = time.perf_counter()
            backends[name].infer(tensor)
            times[name].append(round((time.perf_counter() - start) * 1000.0, 3))
    return times


def _agreement(variants: list[Variant], size: int, frames: Frames) -> dict[str, Any]:
    fp32 = next((v for v in variants if v.name == "fp32"), None)
    if fp32 is None:
        return {}
    ref = run_detector(fp32.model.model_copy(update={"input_size": size}), frames, 0.001)
    out = {}
    for v in variants:
        found = run_detector(v.model.model_copy(update={"input_size": size}), frames, 0.001)
        s = score(ref, found, conf=0.25)
        out[v.name] = {k: s[k] for k in ("map50", "map50_95", "precision", "recall")}
        log.info("bench.agreement", variant=v.name, size=size, **out[v.name])
    return out


def format_variants_table(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"model  {result['model']}",
        f"cpu    {m['cpu_model']} ({m['arch']}, {m['cores_usable']} usable cores), "
        f"threads {result['threads'] or 'default'}, runs {result['runs']} interleaved "
        f"(+{result['warmup']} warm-up)",
        f"agreement: {result['agreement_reference']}, {len(result['eval_frames'])} frames",
        "",
        f"{'size':>4}  {'variant':<13} {'mean ms':>8} {'std':>6} {'p50':>7} {'p95':>7} "
        f"{'min':>7} {'fps':>6} {'x p50':>6} {'size MB':>8} {'mAP50':>6} {'P':>6} {'R':>6}",
    ]
    for block in result["sizes"]:
        for row in block["rows"]:
            agree = row["agreement"] or {}
            size_mb = f"{row['bytes'] / 1e6:.1f}" if row["bytes"] else "-"
            lines.append(
                f"{block['size']:>4}  {row['variant']:<13} {row['mean_ms']:>8.1f} "
                f"{row['std_ms']:>6.1f} {row['p50_ms']:>7.1f} {row['p95_ms']:>7.1f} "
                f"{row['min_ms']:>7.1f} {row['fps']:>6.2f} {row['speedup_p50'] or 0:>6.2f} "
                f"{size_mb:>8} "
                f"{_num(agree.get('map50'))} {_num(agree.get('precision'))} "
                f"{_num(agree.get('recall'))}"
            )
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return f"{value:>6.3f}" if value is not None else f"{'-':>6}"

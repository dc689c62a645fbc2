"""TensorRT engines: the cache key, the cache, and the build (`edged build-engine`).

An engine is only valid for the ONNX file, TensorRT version, GPU, precision and input shapes
it was built with, so the cache file name is a digest of exactly those; a change of any of
them is a different file, i.e. a rebuild. A sidecar JSON beside each engine holds the key in
clear (for people, and to refuse a file whose sidecar disagrees). The builder's timing cache is
kept in the same folder and reused, which makes rebuilds after a model change much faster.

Written against the TensorRT 10 Python API: explicit-batch networks (the default),
`build_serialized_network`, memory-pool limits, `IProgressMonitor`, named tensors.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger(__name__)

MIN_DYNAMIC_SIDE = 320  # the governor's smallest step; a dynamic engine covers [320, native]


class EngineError(Exception):
    """An engine cannot be built or loaded; str() is one line with the fix."""


@dataclass(frozen=True)
class EngineKey:
    onnx_sha256: str
    tensorrt: str
    gpu: str  # name + compute capability: the kernels chosen depend on both
    precision: str
    shapes: tuple[tuple[int, ...], ...]  # (min, opt, max) input shapes of the profile

    def digest(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def profile_shapes(size: int, dynamic: bool) -> tuple[tuple[int, ...], ...]:
    """(min, opt, max): a fixed model has one shape; a dynamic one covers the governor's
    steps down from the native size, optimised for the native size."""
    shape = (1, 3, size, size)
    if not dynamic:
        return (shape, shape, shape)
    low = min(MIN_DYNAMIC_SIDE, size)
    return ((1, 3, low, low), shape, shape)


def engine_path(cache_dir: Path, onnx_path: Path, key: EngineKey) -> Path:
    size = key.shapes[1][-1]
    return cache_dir / "engines" / f"{onnx_path.stem}-{size}-{key.precision}-{key.digest()}.engine"


Builder = Callable[..., bytes]


def ensure_engine(
    onnx_path: Path, key: EngineKey, cache_dir: Path, build: Builder, **build_args: Any
) -> tuple[Path, bool]:
    """The cached engine for `key`, building it with `build(onnx_path, key, ...)` when
    absent or when its sidecar names another key. Returns (path, built_now)."""
    path = engine_path(cache_dir, onnx_path, key)
    sidecar = path.with_suffix(".json")
    if path.is_file() and _sidecar_key(sidecar) == asdict(key):
        log.info("engine.cache_hit", path=str(path))
        return path, False
    stale = sorted(p.name for p in path.parent.glob(f"{onnx_path.stem}-*.engine")) \
        if path.parent.is_dir() else []
    log.info("engine.building", path=str(path), precision=key.precision, gpu=key.gpu,
             tensorrt=key.tensorrt, other_cached=stale)
    started = time.perf_counter()
    data = build(onnx_path, key, timing_cache=cache_dir / "engines" / "timing.cache",
                 **build_args)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)  # a crash mid-write must never leave a truncated engine in place
    sidecar.write_text(json.dumps({**asdict(key), "onnx": str(onnx_path),
                                   "built_at": time.time()}, indent=1) + "\n")
    log.info("engine.built", path=str(path), bytes=len(data),
             seconds=round(time.perf_counter() - started, 1))
    return path, True


def _sidecar_key(sidecar: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return None
    fields = ("onnx_sha256", "tensorrt", "gpu", "precision", "shapes")
    if not isinstance(doc, dict) or any(f not in doc for f in fields):
        return None
    return {f: (tuple(tuple(s) for s in doc[f]) if f == "shapes" else doc[f]) for f in fields}


def current_key(onnx_path: Path, precision: str, size: int, dynamic: bool) -> EngineKey:
    """The key on this machine (imports tensorrt and pycuda; no CUDA context is created)."""
    import pycuda.driver as cuda
    import tensorrt as trt

    cuda.init()
    device = cuda.Device(0)
    major, minor = device.compute_capability()
    return EngineKey(file_sha256(onnx_path), trt.__version__, f"{device.name()} sm_{major}{minor}",
                     precision, profile_shapes(size, dynamic))


def build_engine_bytes(
    onnx_path: Path, key: EngineKey, *, timing_cache: Path, workspace_mb: int = 1024,
    calibrator: Any = None, progress: Callable[[str], None] | None = None,
) -> bytes:
    """Parse the ONNX file and build a serialized engine for `key` (TensorRT 10 API)."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes(), str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"{onnx_path}: TensorRT cannot parse it: {errors[:400]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    tensor = network.get_input(0)
    profile = builder.create_optimization_profile()
    profile.set_shape(tensor.name, *key.shapes)
    config.add_optimization_profile(profile)
    _set_precision(config, network, key, calibrator)
    cache_bytes = timing_cache.read_bytes() if timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=True)  # a foreign cache is ignored, not fatal
    if progress is not None:
        config.progress_monitor = _progress_monitor(trt, progress)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"{onnx_path}: TensorRT failed to build a {key.precision} engine "
                          "(see the TensorRT log above); try more workspace or fp32")
    timing_cache.parent.mkdir(parents=True, exist_ok=True)
    timing_cache.write_bytes(memoryview(config.get_timing_cache().serialize()))
    return bytes(memoryview(serialized))


def fast_fp16(gpu: str) -> bool:
    """Whether the GPU named in a key (`... sm_XY`) has full-rate FP16. TensorRT 10.5
    deprecated the builder's own query in favour of asking CUDA: sm_53/60/62 and sm_70+
    have it; sm_61 (consumer Pascal) runs FP16 at 1/64 rate."""
    tail = gpu.rsplit("sm_", 1)[-1]
    if not tail.isdigit():
        return False
    cc = (int(tail[:-1]), int(tail[-1]))
    return cc >= (7, 0) or cc in ((5, 3), (6, 0), (6, 2))


def _set_precision(config: Any, network: Any, key: EngineKey, calibrator: Any) -> None:
    import tensorrt as trt

    half = fast_fp16(key.gpu)
    if key.precision == "fp16":
        if half:
            config.set_flag(trt.BuilderFlag.FP16)
        else:
            log.warning("engine.fp16_unavailable", gpu=key.gpu, note="building fp32")
    elif key.precision == "int8":
        explicit = any(network.get_layer(i).type == trt.LayerType.QUANTIZE
                       for i in range(network.num_layers))
        config.set_flag(trt.BuilderFlag.INT8)
        if half:
            config.set_flag(trt.BuilderFlag.FP16)  # layers left in float run in fp16
        if not explicit:
            # A plain FP32 ONNX needs ranges: the calibrator (or its cache) provides them.
            # That is TensorRT's implicit quantization (deprecated since 10.1, still there
            # in 10.x); a QDQ model from `edged quantize --mode static` carries its own
            # scales (explicit quantization) and is the preferred input.
            if calibrator is None:
                raise EngineError("int8 from an FP32 model needs calibration frames or a "
                                  "calibration cache (--calib-video/--calib-images/--calib-cache)"
                                  ", or build from the int8-static QDQ model")
            config.int8_calibrator = calibrator


def _progress_monitor(trt: Any, report: Callable[[str], None]) -> Any:
    class Monitor(trt.IProgressMonitor):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            report(f"{phase_name}: {num_steps} steps")

        def step_complete(self, phase_name: str, step: int) -> bool:
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            report(f"{phase_name}: done")

    return Monitor()


def make_calibrator(frames: Any, size: int, cache_path: Path) -> Any:
    """An entropy calibrator over letterboxed frames (the runtime's preprocessing) that reads
    and writes `cache_path`, so later builds on the same model skip calibration. Needs a
    current CUDA context (the caller owns it)."""
    import numpy as np
    import pycuda.driver as cuda
    import tensorrt as trt

    from edged.vision.letterbox import Letterboxer

    class Calibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._images = list(frames.images) if frames is not None else []
            self._letterboxer = Letterboxer(size)
            self._device = cuda.mem_alloc(self._letterboxer.tensor.nbytes)

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names: list[str]) -> list[int] | None:
            if not self._images:
                return None
            self._letterboxer.letterbox(self._images.pop(0))
            cuda.memcpy_htod(self._device, np.ascontiguousarray(self._letterboxer.tensor))
            return [int(self._device)]

        def read_calibration_cache(self) -> bytes | None:
            return cache_path.read_bytes() if cache_path.is_file() else None

        def write_calibration_cache(self, cache: Any) -> None:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            cache_path.write_bytes(bytes(memoryview(cache)))

    return Calibrator()


def build_engine_command(model: Any, calibration: Any = None,
                         progress: Callable[[str], None] | None = None) -> Path:
    """`edged build-engine`: the engine for `model` (a ModelConfig) in its cache_dir."""
    from edged.tools.model_info import describe_model

    try:
        import pycuda.driver as cuda
        import tensorrt  # noqa: F401
    except Exception as exc:
        raise EngineError(f"TensorRT 10 and pycuda are needed to build engines ({exc}); "
                          "pip install 'edged[tensorrt]' on the NVIDIA board") from None
    info = describe_model(Path(model.path))
    size = model.input_size or (max(info["imgsz"]) if info["imgsz"] else 640)
    cuda.init()
    ctx = cuda.Device(0).make_context()  # this CLI process owns it; never the daemon's
    try:
        key = current_key(Path(model.path), model.trt_precision, size, info["dynamic"])
        path, _ = ensure_engine(Path(model.path), key, model.cache_dir, build_engine_bytes,
                                workspace_mb=model.trt_workspace_mb,
                                calibrator=calibrator_for(model, size, calibration),
                                progress=progress)
    finally:
        ctx.pop()
        ctx.detach()
    return path


def calibrator_for(model: Any, size: int, calibration: Any = None) -> Any:
    """The INT8 calibrator for `model`, or None when it is not int8 or has nothing to
    calibrate with (neither frames nor an existing cache)."""
    if model.trt_precision != "int8":
        return None
    cache = model.trt_calibration_cache or (
        Path(model.cache_dir) / "engines" / f"{Path(model.path).stem}.calib")
    if calibration is None and not Path(cache).is_file():
        return None
    return make_calibrator(calibration, size, Path(cache))

"""Which backend runs the model: `model.backend`, or for `auto` the best one this board has.

The rules (issue 6): `auto` picks TensorRT when `tensorrt` imports and an NVIDIA GPU is
present, NCNN on ARM when the model has an NCNN twin for its input size, ONNX Runtime
otherwise. A backend named explicitly that cannot run here raises ModelUnavailable with the
reason (the daemon exits 69); it never falls back silently.

Nothing here creates a CUDA context: GPU presence is read from device nodes, so the supervisor
may call `select_backend` for its status line while only the inference worker touches CUDA.
"""

from __future__ import annotations

import glob
import importlib
import importlib.util
import json
import platform
from dataclasses import dataclass
from pathlib import Path

import structlog

from edged.backends.base import Backend, ModelUnavailable
from edged.config import ModelConfig

log = structlog.get_logger(__name__)

BACKENDS = ("onnxruntime", "tensorrt", "ncnn")
_ARM = ("aarch64", "arm64", "armv7l", "armv8l")
# Desktop/server drivers create /dev/nvidia0..N; Jetson (Tegra) exposes the iGPU as nvhost/nvgpu.
_GPU_NODES = ("/dev/nvidia[0-9]*", "/dev/nvhost-ctrl-gpu", "/dev/nvgpu/igpu0/ctrl")


@dataclass(frozen=True)
class Selection:
    """The backend to run and one line saying why (logged and shown in `edged status`)."""

    backend: str
    reason: str


def gpu_present() -> bool:
    return any(glob.glob(pattern) for pattern in _GPU_NODES)


def tensorrt_problem() -> str | None:
    """None when TensorRT can run here, else why not (one clause)."""
    # pycuda first: it is only looked up (importing pycuda.autoinit would create a context).
    if importlib.util.find_spec("pycuda") is None:
        return "pycuda is not installed (pip install 'edged[tensorrt]')"
    try:
        trt = importlib.import_module("tensorrt")
    except Exception as exc:  # the PyPI stub raises at import; a broken lib raises OSError
        return f"the tensorrt Python package does not import ({type(exc).__name__}: {exc})"[:300]
    major = str(getattr(trt, "__version__", "0")).split(".")[0]
    if not major.isdigit() or int(major) < 10:
        return f"tensorrt {getattr(trt, '__version__', '?')} is too old; edged needs TensorRT 10"
    if not gpu_present():
        return "no NVIDIA GPU device node (/dev/nvidia0 or Jetson nvhost) is present"
    return None


def ncnn_problem() -> str | None:
    try:
        importlib.import_module("ncnn")
    except Exception as exc:
        return f"the ncnn Python package does not import ({type(exc).__name__}); pip install ncnn"
    return None


def ncnn_twin(model_path: Path, size: int) -> Path | None:
    """The `.param` of the NCNN conversion of `model_path` at `size`, if it exists.

    `edged model convert-ncnn` writes `<stem>.<size>.ncnn.{param,bin,json}` beside the ONNX
    file: pnnx folds the YOLO grid into constants, so an NCNN model has one fixed input size.
    """
    param = model_path.with_name(f"{model_path.stem}.{size}.ncnn.param")
    return param if param.is_file() and param.with_suffix(".bin").is_file() else None


def ncnn_twin_sizes(model_path: Path) -> list[int]:
    sizes = []
    for param in model_path.parent.glob(f"{glob.escape(model_path.stem)}.*.ncnn.param"):
        size = param.name[len(model_path.stem) + 1 :].split(".")[0]
        if size.isdigit() and ncnn_twin(model_path, int(size)) is not None:
            sizes.append(int(size))
    return sorted(sizes)


def native_size(model: ModelConfig) -> int | None:
    """model.input_size, else the ONNX file's fixed side or `imgsz` metadata (no runtime)."""
    if model.input_size is not None:
        return model.input_size
    from edged.tools.model_info import ModelInfoError, describe_model

    try:
        imgsz = describe_model(Path(model.path))["imgsz"]
    except ModelInfoError:
        return None
    return max(imgsz) if imgsz else None


def twin_meta(param: Path) -> dict[str, object]:
    """The converter's sidecar (blob names, size, source sha256); {} when absent or broken."""
    try:
        meta = json.loads(param.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def select_backend(model: ModelConfig, arch: str | None = None) -> Selection:
    """The backend for `model`; raises ModelUnavailable when an explicit one cannot run."""
    arch = arch or platform.machine()
    wanted = model.backend
    if wanted == "onnxruntime":
        return Selection("onnxruntime", "model.backend is onnxruntime")
    if wanted == "tensorrt":
        problem = tensorrt_problem()
        if problem:
            raise ModelUnavailable(
                f"model.backend is 'tensorrt' but {problem}; install TensorRT 10 + pycuda "
                "on an NVIDIA board, or set model.backend to auto or onnxruntime"
            )
        return Selection("tensorrt", "model.backend is tensorrt")
    if wanted == "ncnn":
        problem = ncnn_problem()
        if problem:
            raise ModelUnavailable(
                f"model.backend is 'ncnn' but {problem}, or set model.backend to auto"
            )
        size = native_size(model)
        if size is None or ncnn_twin(Path(model.path), size) is None:
            raise ModelUnavailable(
                f"model.backend is 'ncnn' but {model.path} has no NCNN twin for input size "
                f"{size}; run `edged model convert-ncnn {model.path} --sizes {size or 416}`"
            )
        return Selection("ncnn", "model.backend is ncnn")
    return _auto(model, arch)


def _auto(model: ModelConfig, arch: str) -> Selection:
    # Only probe TensorRT where a GPU node exists: importing it on a CPU box costs ~1 s.
    if gpu_present():
        problem = tensorrt_problem()
        if problem is None:
            return Selection("tensorrt", "auto: tensorrt imports and an NVIDIA GPU is present")
        trt_note = f"tensorrt unusable: {problem}"
    else:
        trt_note = "no NVIDIA GPU"
    if arch in _ARM:
        size = native_size(model)
        if size is not None and ncnn_twin(Path(model.path), size) is not None:
            if ncnn_problem() is None:
                return Selection("ncnn", f"auto: {arch} CPU and an NCNN twin at {size}")
            return Selection("onnxruntime", f"auto: {trt_note}; NCNN twin present but "
                                            f"{ncnn_problem()}")
        return Selection("onnxruntime", f"auto: {trt_note}; {arch} but no NCNN twin at {size} "
                                        "(edged model convert-ncnn)")
    return Selection("onnxruntime", f"auto: {trt_note}; {arch} CPU")


def create_backend(model: ModelConfig, selection: Selection | None = None) -> Backend:
    """The selected backend for `model`, not loaded yet; logs the choice and the reason."""
    selection = selection or select_backend(model)
    log.info("backend.selected", backend=selection.backend, reason=selection.reason)
    if selection.backend == "tensorrt":
        from edged.backends.tensorrt import TensorRTBackend

        return TensorRTBackend(model, reason=selection.reason)
    if selection.backend == "ncnn":
        from edged.backends.ncnn import NcnnBackend

        return NcnnBackend(model, reason=selection.reason)
    from edged.backends.onnxruntime import OnnxRuntimeBackend

    return OnnxRuntimeBackend(model, reason=selection.reason)

"""ONNX Runtime backend: CPU by default; CUDA, TensorRT or OpenVINO providers on request."""

from __future__ import annotations

import ast
import hashlib
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import structlog

from edged.backends.base import Backend, InputSpec, ModelUnavailable
from edged.config import ModelConfig

log = structlog.get_logger(__name__)

PROVIDERS: dict[str, str] = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
}
_SHORT_NAMES = {full: short for short, full in PROVIDERS.items()}
DEFAULT_INPUT_SIZE = 640
_STRIDE = 32


class OnnxRuntimeBackend(Backend):
    def __init__(self, config: ModelConfig, reason: str = "") -> None:
        self.config = config
        self.path = Path(config.path)
        self.reason = reason
        self._session: ort.InferenceSession | None = None
        self._spec: InputSpec | None = None
        self._output_name = ""
        self._metadata: dict[str, str] = {}
        self._cache_state = "off"
        # I/O binding: the bound input array (by identity) and the preallocated output.
        self._binding: ort.IOBinding | None = None
        self._bound: tuple[int, int] | None = None
        self._out: np.ndarray | None = None

    def load(self) -> None:
        if self._session is not None:
            return
        started = time.perf_counter()
        self._check_file()
        wanted = [PROVIDERS[name] for name in self.config.providers]
        available = ort.get_available_providers()
        missing = [p for p in wanted if p not in available]
        if missing:
            raise ModelUnavailable(
                f"{self.path}: execution provider {_short(missing[0])!r} ({missing[0]}) is not "
                f"available in onnxruntime {ort.__version__} (available: {_shorts(available)}); "
                "install the matching onnxruntime build or change model.providers"
            )
        try:
            session = self._open_session(wanted)
        except Exception as exc:  # ORT raises several pybind types for one cause: bad file
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelUnavailable(
                f"{self.path}: not a loadable ONNX model ({reason[:200]}); re-export or "
                "re-download it (`make setup`)"
            ) from None
        # ORT quietly drops an EP whose libraries fail to load (CUDA without cuDNN, say) and
        # runs on CPU; a board configured for the GPU must not silently run 10x slower.
        used = session.get_providers()
        dropped = [p for p in wanted if p not in used]
        if dropped:
            raise ModelUnavailable(
                f"{self.path}: execution provider {_short(dropped[0])!r} failed to initialise "
                f"(session got: {_shorts(used)}); check its libraries (CUDA, cuDNN, TensorRT) "
                "or change model.providers"
            )
        self._metadata = dict(session.get_modelmeta().custom_metadata_map)
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            shapes = [(i.name, i.shape) for i in inputs]
            raise ModelUnavailable(
                f"{self.path}: expected one image input [1, 3, H, W], found {shapes}; "
                "export the model as a plain detector"
            )
        self._output_name = outputs[0].name
        self._spec = self._resolve_input(inputs[0].name, inputs[0].shape)
        self._session = session
        log.info(
            "backend.loaded",
            path=str(self.path),
            provider=used[0],
            providers=used,
            input_size=self._spec.size,
            dynamic=self._spec.dynamic,
            intra_op_threads=self.config.intra_op_threads,
            inter_op_threads=self.config.inter_op_threads,
            io_binding=self.io_binding,
            optimized_cache=self._cache_state,
            load_ms=round((time.perf_counter() - started) * 1000, 1),
        )

    def set_input_size(self, size: int) -> None:
        spec = self.input_spec
        if not spec.dynamic:
            super().set_input_size(size)
            return
        if size <= 0 or size % _STRIDE:
            raise ValueError(f"input size must be a positive multiple of {_STRIDE}, got {size}")
        if size != spec.size:
            self._spec = InputSpec(spec.name, size, True)
            self._bound = None  # the output shape changes with the input side
            log.info("backend.input_size_changed", input_size=size, previous=spec.size)

    @property
    def io_binding(self) -> bool:
        """Whether infer() runs through an I/O binding into a preallocated output."""
        if self.config.io_binding != "auto":
            return self.config.io_binding == "on"
        # On CPU ORT already reads the numpy input in place and the output allocation is
        # noise next to a convolution; on a GPU the binding lets ORT copy the result straight
        # into our buffer instead of staging it in a fresh array per frame.
        return self.config.providers[0] != "cpu"

    def infer(self, tensor: np.ndarray) -> np.ndarray:
        """The output; with I/O binding it is a buffer reused by the next call (copy to keep)."""
        if self._session is None or self._spec is None:
            raise RuntimeError("backend not loaded; call load() first")
        if not self.io_binding:
            return self._session.run([self._output_name], {self._spec.name: tensor})[0]
        key = (tensor.__array_interface__["data"][0], tensor.shape[-1])
        if self._bound != key:
            self._bind(tensor)
        assert self._binding is not None and self._out is not None
        self._session.run_with_iobinding(self._binding)
        return self._out

    def _bind(self, tensor: np.ndarray) -> None:
        # One plain run tells the output shape for this input side (dynamic models declare
        # symbols); after that every frame reuses the same input and output memory.
        assert self._session is not None and self._spec is not None
        shape = self._session.run([self._output_name], {self._spec.name: tensor})[0].shape
        tensor = np.ascontiguousarray(tensor, np.float32)
        binding = self._session.io_binding()
        binding.bind_cpu_input(self._spec.name, tensor)
        self._out = np.empty(shape, np.float32)
        binding.bind_output(self._output_name, "cpu", 0, np.float32, list(shape),
                            self._out.ctypes.data)
        self._binding = binding
        self._bound = (tensor.__array_interface__["data"][0], tensor.shape[-1])

    def describe(self) -> dict[str, Any]:
        spec = self.input_spec
        assert self._session is not None
        return {
            "backend": "onnxruntime",
            "reason": self.reason,
            "onnxruntime": ort.__version__,
            "path": str(self.path),
            "providers": list(self._session.get_providers()),
            "input_name": spec.name,
            "input_size": spec.size,
            "dynamic": spec.dynamic,
            "output_name": self._output_name,
            "intra_op_threads": self.config.intra_op_threads,
            "inter_op_threads": self.config.inter_op_threads,
            "io_binding": self.io_binding,
            "optimized_cache": self._cache_state,
        }

    def _open_session(self, providers: list[str]) -> ort.InferenceSession:
        if not self.config.ort_optimized_cache:
            return ort.InferenceSession(str(self.path), self._session_options(), providers)
        cached = optimized_cache_path(self.config)
        if cached.is_file():
            # The graph in the file is already optimized for this CPU and ORT build (the key
            # says so); optimizing it again would only repeat the start-up cost it saves.
            options = self._session_options()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            try:
                session = ort.InferenceSession(str(cached), options, providers)
            except Exception as exc:  # a torn or foreign file: rebuild it below
                log.warning("backend.optimized_cache_unusable", path=str(cached), error=str(exc))
            else:
                self._cache_state = f"hit {cached}"
                return session
        options = self._session_options()
        tmp = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            options.optimized_model_filepath = str(tmp)
        except OSError as exc:
            log.warning("backend.optimized_cache_unwritable", dir=str(cached.parent),
                        error=exc.strerror)
            return ort.InferenceSession(str(self.path), options, providers)
        session = ort.InferenceSession(str(self.path), options, providers)
        try:
            os.replace(tmp, cached)  # atomic: a reader never sees a half-written graph
            self._cache_state = f"written {cached}"
        except OSError as exc:
            log.warning("backend.optimized_cache_unwritable", path=str(cached),
                        error=exc.strerror)
        return session

    def _check_file(self) -> None:
        if not self.path.exists():
            raise ModelUnavailable(
                f"model file {self.path} does not exist; run `make setup` or fix model.path"
            )
        if not self.path.is_file():
            raise ModelUnavailable(
                f"model path {self.path} is not a file; point model.path at an .onnx file"
            )
        if not os.access(self.path, os.R_OK):
            raise ModelUnavailable(
                f"model file {self.path} is not readable by uid {os.getuid()}; fix its "
                "permissions (the service user must be able to read it)"
            )

    def _session_options(self) -> ort.SessionOptions:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = self.config.intra_op_threads
        options.inter_op_num_threads = self.config.inter_op_threads
        # ORT's own logger writes to stderr; warnings about unused initialisers and the like
        # would flood the journal, real failures still surface as exceptions.
        options.log_severity_level = 3
        return options

    def _resolve_input(self, name: str, shape: list[Any]) -> InputSpec:
        height, width = shape[2], shape[3]
        fixed = isinstance(height, int) and isinstance(width, int) and height > 0 and width > 0
        wanted = self.config.input_size
        if fixed:
            if height != width:
                raise ModelUnavailable(
                    f"{self.path}: input is {height}x{width}; edged needs a square input, "
                    "re-export with a square imgsz"
                )
            if wanted is not None and wanted != height:
                raise ModelUnavailable(
                    f"{self.path}: input is fixed at {height}x{width} but model.input_size is "
                    f"{wanted}; remove model.input_size or export the model at {wanted}"
                )
            return InputSpec(name, int(height), False)
        size = wanted or _metadata_imgsz(self._metadata) or DEFAULT_INPUT_SIZE
        return InputSpec(name, size, True)


def optimized_cache_path(config: ModelConfig) -> Path:
    """Where the optimized graph of `config.path` lives for this ORT build, CPU and EP list.

    ORT_ENABLE_ALL writes hardware-specific kernels (NCHWc blocking for the CPU's vector
    width) into the graph, so the key names everything that could make the file wrong.
    """
    digest = hashlib.sha256()
    with Path(config.path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    key = "|".join([digest.hexdigest(), ort.__version__, platform.machine(), cpu_fingerprint(),
                    ",".join(config.providers)])
    short = hashlib.sha256(key.encode()).hexdigest()[:16]
    return config.cache_dir / "ort" / f"{Path(config.path).stem}-{short}.onnx"


def cpu_fingerprint() -> str:
    """CPU model + feature flags: what decides which kernels an optimizer may pick."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    fields = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        fields.setdefault(name.strip(), value.strip())
    return "|".join(fields.get(k, "") for k in ("model name", "flags", "Features", "CPU part"))


def _metadata_imgsz(metadata: dict[str, str]) -> int | None:
    """Ultralytics writes imgsz as '[640, 640]' (or a bare int); take the larger side."""
    raw = metadata.get("imgsz")
    if not raw:
        return None
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return None
    sides = value if isinstance(value, list | tuple) else [value]
    if not sides or not all(isinstance(s, int) and s > 0 for s in sides):
        return None
    return max(sides)


def _short(provider: str) -> str:
    return _SHORT_NAMES.get(provider, provider)


def _shorts(providers: list[str]) -> str:
    return ", ".join(_short(p) for p in providers) or "none"

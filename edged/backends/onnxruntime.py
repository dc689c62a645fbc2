"""ONNX Runtime backend: CPU by default; CUDA, TensorRT or OpenVINO providers on request."""

from __future__ import annotations

import ast
import os
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
    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self.path = Path(config.path)
        self._session: ort.InferenceSession | None = None
        self._spec: InputSpec | None = None
        self._output_name = ""
        self._metadata: dict[str, str] = {}

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
            session = ort.InferenceSession(
                str(self.path), sess_options=self._session_options(), providers=wanted
            )
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
            load_ms=round((time.perf_counter() - started) * 1000, 1),
        )

    @property
    def input_spec(self) -> InputSpec:
        if self._spec is None:
            raise RuntimeError("backend not loaded; call load() first")
        return self._spec

    @property
    def metadata(self) -> dict[str, str]:
        if self._session is None:
            raise RuntimeError("backend not loaded; call load() first")
        return dict(self._metadata)

    def set_input_size(self, size: int) -> None:
        spec = self.input_spec
        if not spec.dynamic:
            super().set_input_size(size)
            return
        if size <= 0 or size % _STRIDE:
            raise ValueError(f"input size must be a positive multiple of {_STRIDE}, got {size}")
        if size != spec.size:
            self._spec = InputSpec(spec.name, size, True)
            log.info("backend.input_size_changed", input_size=size, previous=spec.size)

    def infer(self, tensor: np.ndarray) -> np.ndarray:
        if self._session is None or self._spec is None:
            raise RuntimeError("backend not loaded; call load() first")
        return self._session.run([self._output_name], {self._spec.name: tensor})[0]

    def describe(self) -> dict[str, Any]:
        spec = self.input_spec
        assert self._session is not None
        return {
            "backend": "onnxruntime",
            "onnxruntime": ort.__version__,
            "path": str(self.path),
            "providers": list(self._session.get_providers()),
            "input_name": spec.name,
            "input_size": spec.size,
            "dynamic": spec.dynamic,
            "output_name": self._output_name,
            "intra_op_threads": self.config.intra_op_threads,
            "inter_op_threads": self.config.inter_op_threads,
        }

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

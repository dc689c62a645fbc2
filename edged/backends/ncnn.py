"""NCNN backend: the pnnx conversion (`<stem>.<size>.ncnn.param/.bin`) of the configured ONNX.

model.path stays the ONNX file: it carries the class names and layout metadata, and the
twins beside it are found by name. pnnx folds the YOLO grid into constants, so each twin has
one input size; switching size loads another twin (the governor's 416 -> 320 step needs both:
`edged model convert-ncnn model.onnx --sizes 416,320`). The output is the same (1, N, 85)
tensor as the ONNX model's, decoded by the same decoder.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from edged.backends.base import Backend, InputSpec, ModelUnavailable
from edged.backends.select import native_size, ncnn_twin, ncnn_twin_sizes, twin_meta
from edged.config import ModelConfig

log = structlog.get_logger(__name__)


class NcnnBackend(Backend):
    def __init__(self, config: ModelConfig, reason: str = "") -> None:
        self.config = config
        self.path = Path(config.path)
        self.reason = reason
        self._net: Any = None
        self._spec: InputSpec | None = None
        self._param: Path | None = None
        self._blobs = ("in0", "out0")
        self._metadata: dict[str, str] = {}
        self._onnx_sha = ""

    def load(self) -> None:
        if self._net is not None:
            return
        try:
            import ncnn  # noqa: F401  (import here: a board without ncnn never pays for it)
        except ImportError as exc:
            raise ModelUnavailable(f"ncnn is not installed ({exc}); pip install ncnn") from None
        from edged.tools.model_info import ModelInfoError, describe_model

        try:
            info = describe_model(self.path)
        except ModelInfoError as exc:
            raise ModelUnavailable(f"{exc}; the NCNN backend reads names from it") from None
        self._metadata = {str(k): str(v) for k, v in info["metadata"].items()}
        self._onnx_sha = info["sha256"]
        size = native_size(self.config)
        if size is None:
            raise ModelUnavailable(f"{self.path}: input size unknown; set model.input_size")
        self._open(size)

    def set_input_size(self, size: int) -> None:
        spec = self.input_spec
        if size == spec.size:
            return
        if ncnn_twin(self.path, size) is None:
            raise ValueError(
                f"no NCNN twin of {self.path.name} at {size} (have {self.sizes()}); run "
                f"`edged model convert-ncnn {self.path} --sizes {size}`"
            )
        self._open(size)
        log.info("backend.input_size_changed", input_size=size, previous=spec.size)

    def sizes(self) -> list[int]:
        return ncnn_twin_sizes(self.path)

    def infer(self, tensor: np.ndarray) -> np.ndarray:
        import ncnn

        if self._net is None or self._spec is None:
            raise RuntimeError("backend not loaded; call load() first")
        size = self._spec.size
        if tensor.shape != (1, 3, size, size):
            raise ValueError(f"expected a [1, 3, {size}, {size}] tensor, got {tensor.shape}")
        with self._net.create_extractor() as ex:
            # clone(): a Mat built on a numpy array only borrows it, and the borrowed pointer
            # has been seen dangling once the temporary goes away (MODELS.md).
            ex.input(self._blobs[0], ncnn.Mat(np.ascontiguousarray(tensor[0])).clone())
            ret, out = ex.extract(self._blobs[1])
            if ret != 0:
                raise RuntimeError(f"ncnn extract({self._blobs[1]!r}) failed with {ret}")
            # Copy out of the Mat before the extractor (which owns its memory) is released.
            result = np.array(out, np.float32, copy=True)
        return result.reshape(1, *result.shape[-2:])

    def describe(self) -> dict[str, Any]:
        import ncnn

        spec = self.input_spec
        return {
            "backend": "ncnn",
            "reason": self.reason,
            "ncnn": getattr(ncnn, "__version__", "?"),
            "path": str(self.path),
            "param": str(self._param),
            "input_name": self._blobs[0],
            "output_name": self._blobs[1],
            "input_size": spec.size,
            "sizes": self.sizes(),
            "dynamic": spec.dynamic,
            "threads": self._threads(),
            "fp16_storage": bool(self._net.opt.use_fp16_storage),
        }

    def _threads(self) -> int:
        if self.config.ncnn_threads:
            return self.config.ncnn_threads
        try:
            return len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            return os.cpu_count() or 1

    def _open(self, size: int) -> None:
        import ncnn

        started = time.perf_counter()
        param = ncnn_twin(self.path, size)
        if param is None:
            raise ModelUnavailable(
                f"{self.path}: no NCNN twin at input size {size}; run "
                f"`edged model convert-ncnn {self.path} --sizes {size}`"
            )
        meta = twin_meta(param)
        source = str(meta.get("onnx_sha256", ""))
        if source and source != self._onnx_sha:
            # An NCNN twin left over from an earlier model would run, but detect nonsense.
            raise ModelUnavailable(
                f"{param} was converted from another version of {self.path.name} (sha256 "
                f"{source[:12]} != {self._onnx_sha[:12]}); run `edged model convert-ncnn` again"
            )
        net = ncnn.Net()
        net.opt.num_threads = self._threads()
        net.opt.use_vulkan_compute = False  # a GPU board runs TensorRT; Vulkan is not tested
        if net.load_param(str(param)) != 0 or net.load_model(str(param.with_suffix(".bin"))) != 0:
            raise ModelUnavailable(f"{param}: ncnn cannot load it; convert the model again")
        self._blobs = (str(meta.get("input", "in0")), str(meta.get("output", "out0")))
        self._net, self._param = net, param
        self._spec = InputSpec(self._blobs[0], size, len(self.sizes()) > 1)
        log.info("backend.loaded", backend="ncnn", param=str(param), input_size=size,
                 threads=net.opt.num_threads,
                 load_ms=round((time.perf_counter() - started) * 1000, 1))


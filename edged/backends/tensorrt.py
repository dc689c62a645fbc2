"""TensorRT backend (TensorRT 10 API, pycuda): cached engine, page-locked I/O, one stream.

Everything CUDA happens in `load()`, which runs in the inference worker: the CUDA context is
created there and never in the supervisor (a context does not survive fork, and a hung driver
must take down one worker, not the daemon). Importing this module imports neither tensorrt
nor pycuda.

Per frame: copy the letterboxed tensor into a page-locked host buffer, async H2D on our
stream, `execute_async_v3` on the same stream, async D2H into a page-locked output buffer,
synchronize. Tensors are addressed by name (`set_tensor_address`), input shapes set with
`set_input_shape`. The returned array is the page-locked output buffer, reused by the next
call (the detector decodes it before that).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from edged.backends.base import Backend, InputSpec, ModelUnavailable
from edged.config import ModelConfig

log = structlog.get_logger(__name__)

_STRIDE = 32


class TensorRTBackend(Backend):
    def __init__(self, config: ModelConfig, reason: str = "") -> None:
        self.config = config
        self.path = Path(config.path)
        self.reason = reason
        self._cuda: Any = None
        self._ctx: Any = None
        self._engine: Any = None
        self._context: Any = None
        self._stream: Any = None
        self._spec: InputSpec | None = None
        self._engine_path: Path | None = None
        self._output_name = ""
        self._limits = (0, 0)
        self._host_in: np.ndarray | None = None
        self._host_out: np.ndarray | None = None
        self._device: dict[str, Any] = {}
        self._metadata: dict[str, str] = {}

    def load(self) -> None:
        if self._engine is not None:
            return
        try:
            import pycuda.driver as cuda
            import tensorrt as trt
        except Exception as exc:
            raise ModelUnavailable(f"TensorRT backend: {type(exc).__name__}: {exc}; install "
                                   "TensorRT 10 and pycuda (edged[tensorrt])") from None
        from edged.tools.engine import (
            EngineError,
            build_engine_bytes,
            calibrator_for,
            current_key,
            ensure_engine,
        )
        from edged.tools.model_info import ModelInfoError, describe_model

        started = time.perf_counter()
        try:
            info = describe_model(self.path)
        except ModelInfoError as exc:
            raise ModelUnavailable(str(exc)) from None
        self._metadata = {str(k): str(v) for k, v in info["metadata"].items()}
        size = self.config.input_size or (max(info["imgsz"]) if info["imgsz"] else 640)
        cuda.init()
        self._cuda = cuda
        self._ctx = cuda.Device(0).make_context()  # current on this (the worker's) thread
        try:
            key = current_key(self.path, self.config.trt_precision, size, info["dynamic"])
            engine_file, _ = ensure_engine(
                self.path, key, self.config.cache_dir, build_engine_bytes,
                workspace_mb=self.config.trt_workspace_mb,
                calibrator=calibrator_for(self.config, size),
            )
            runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            self._engine = runtime.deserialize_cuda_engine(engine_file.read_bytes())
            if self._engine is None:
                raise ModelUnavailable(f"{engine_file}: TensorRT cannot deserialize it; "
                                       "delete it to rebuild")
            self._context = self._engine.create_execution_context()
            self._stream = cuda.Stream()
            self._engine_path = engine_file
            self._bind_names(trt, key.shapes)
            self._allocate(size)
        except EngineError as exc:
            self.close()
            raise ModelUnavailable(str(exc)) from None
        except ModelUnavailable:
            self.close()
            raise
        log.info("backend.loaded", backend="tensorrt", engine=str(self._engine_path),
                 precision=self.config.trt_precision, input_size=size, tensorrt=trt.__version__,
                 load_ms=round((time.perf_counter() - started) * 1000, 1))

    def _bind_names(self, trt: Any, shapes: tuple[tuple[int, ...], ...]) -> None:
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names
                  if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or not outputs:
            raise ModelUnavailable(f"{self.path}: expected one input and an output, got "
                                   f"{inputs} -> {outputs}")
        self._output_name = outputs[0]
        self._limits = (shapes[0][-1], shapes[2][-1])
        dynamic = self._limits[0] != self._limits[1]
        self._spec = InputSpec(inputs[0], shapes[1][-1], dynamic)

    def _allocate(self, size: int) -> None:
        cuda, spec = self._cuda, self.input_spec
        self._context.set_input_shape(spec.name, (1, 3, size, size))
        out_shape = tuple(self._context.get_tensor_shape(self._output_name))
        self._host_in = cuda.pagelocked_empty((1, 3, size, size), np.float32)
        self._host_out = cuda.pagelocked_empty(out_shape, np.float32)
        self._device = {spec.name: cuda.mem_alloc(self._host_in.nbytes),
                        self._output_name: cuda.mem_alloc(self._host_out.nbytes)}
        for name, memory in self._device.items():
            self._context.set_tensor_address(name, int(memory))
        self._spec = InputSpec(spec.name, size, spec.dynamic)

    def set_input_size(self, size: int) -> None:
        spec = self.input_spec
        if size == spec.size:
            return
        low, high = self._limits
        if size % _STRIDE or not low <= size <= high:
            raise ValueError(f"engine {self._engine_path} covers inputs {low}..{high} "
                             f"(multiples of {_STRIDE}); cannot switch to {size}")
        self._allocate(size)
        log.info("backend.input_size_changed", input_size=size, previous=spec.size)

    def infer(self, tensor: np.ndarray) -> np.ndarray:
        if self._context is None or self._host_in is None or self._host_out is None:
            raise RuntimeError("backend not loaded; call load() first")
        cuda, stream = self._cuda, self._stream
        np.copyto(self._host_in, tensor)
        cuda.memcpy_htod_async(self._device[self.input_spec.name], self._host_in, stream)
        if not self._context.execute_async_v3(stream_handle=stream.handle):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        cuda.memcpy_dtoh_async(self._host_out, self._device[self._output_name], stream)
        stream.synchronize()
        return self._host_out

    def describe(self) -> dict[str, Any]:
        spec = self.input_spec
        return {
            "backend": "tensorrt",
            "reason": self.reason,
            "path": str(self.path),
            "engine": str(self._engine_path),
            "precision": self.config.trt_precision,
            "input_name": spec.name,
            "output_name": self._output_name,
            "input_size": spec.size,
            "input_range": list(self._limits),
            "dynamic": spec.dynamic,
        }

    def close(self) -> None:
        """Free device memory and drop the context (the worker calls it on the way out)."""
        self._device.clear()
        self._context = self._engine = None
        if self._ctx is not None:
            self._ctx.pop()
            self._ctx.detach()
            self._ctx = None

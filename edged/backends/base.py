"""What every inference backend offers the detector: one tensor in, one raw output out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np


class ModelUnavailable(Exception):
    """The model cannot be used: missing, unreadable, corrupt, or its runtime is missing.

    str() is one line naming the path (or provider) and the fix; the daemon exits 69.
    """


@dataclass(frozen=True)
class InputSpec:
    """The model input: tensor name, square side in pixels, and whether H/W are dynamic."""

    name: str
    size: int
    dynamic: bool


class Backend(ABC):
    """An inference runtime bound to one model file.

    Construction is cheap; `load` does the slow part (parsing, optimising, building engines)
    so the caller can extend its watchdog grace around it. Everything else needs `load` first.
    `load` sets `_spec` and `_metadata`.
    """

    _spec: InputSpec | None = None
    _metadata: dict[str, str]

    @abstractmethod
    def load(self) -> None:
        """Open the model; raises ModelUnavailable. Calling it again is a no-op."""

    @property
    def input_spec(self) -> InputSpec:
        """The current input (name, size, dynamic)."""
        if self._spec is None:
            raise RuntimeError("backend not loaded; call load() first")
        return self._spec

    @property
    def metadata(self) -> dict[str, str]:
        """The model's key/value metadata (Ultralytics `names`, `imgsz`, our `layout`)."""
        if self._spec is None:
            raise RuntimeError("backend not loaded; call load() first")
        return dict(self._metadata)

    @abstractmethod
    def infer(self, tensor: np.ndarray) -> np.ndarray:
        """Run one [1, 3, S, S] float32 tensor; returns the model's (only) output."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """JSON-serialisable facts for logs, status and benchmarks."""

    def set_input_size(self, size: int) -> None:
        """Switch the input side; only models with dynamic H/W can, others raise ValueError."""
        spec = self.input_spec
        if size != spec.size:
            raise ValueError(
                f"model input is fixed at {spec.size}x{spec.size}; cannot switch to {size}"
            )

    def warmup(self, n: int = 1) -> None:
        """Run `n` inferences on a gray tensor so first-frame latency is paid up front."""
        size = self.input_spec.size
        tensor = np.full((1, 3, size, size), 114 / 255, np.float32)
        for _ in range(n):
            self.infer(tensor)

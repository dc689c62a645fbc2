"""Checks made once before any worker starts, so a bad model or source fails fast and clearly."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import onnx

from edged.backends.base import ModelUnavailable
from edged.backends.select import select_backend
from edged.config import Config, ConfigError, ModelConfig
from edged.tools.model_info import read_class_names

# The thermal ladder's rungs; a model's ladder is the three rungs from its own size down
# (640 -> 640/416/320 as in the seeds; the 416-native default model -> 416/320/256).
LADDER = (1280, 960, 640, 416, 320, 256, 192, 160)


class SourceUnavailable(Exception):
    """The configured source can never work as given (e.g. a video file that is not there)."""


@dataclass(frozen=True)
class ModelFacts:
    names: list[str]
    dynamic: bool  # height and width are symbolic: any multiple of 32 runs
    input_size: int  # the size the daemon starts with
    backend: str = "onnxruntime"
    backend_reason: str = ""


def model_facts(model: ModelConfig) -> ModelFacts:
    """Read the ONNX file once: class names, input shape (never guessed)."""
    onnx_model = _read_model(model.path)
    dims = onnx_model.graph.input[0].type.tensor_type.shape.dim
    sides = [d.dim_value for d in dims[2:4]]
    dynamic = len(sides) == 2 and not all(sides)
    size = model.input_size or (None if dynamic else max(sides)) or _imgsz(onnx_model) or 640
    facts = ModelFacts(_class_names(model, onnx_model), dynamic, size)
    del onnx_model
    _release_memory()  # the weights were parsed only to be checked; hand the pages back
    return facts


def _release_memory() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # glibc only; elsewhere a no-op


def ladder(input_size: int) -> list[int]:
    below = [rung for rung in LADDER if rung <= input_size]
    rungs = ([input_size] if input_size not in below else []) + below
    return (rungs + rungs[-1:] * 3)[:3]


def _imgsz(onnx_model: onnx.ModelProto) -> int | None:
    for prop in onnx_model.metadata_props:
        if prop.key == "imgsz":
            digits = [int(x) for x in prop.value.strip("[]() ").split(",") if x.strip().isdigit()]
            return max(digits) if digits else None
    return None


def load_class_names(model: ModelConfig) -> list[str]:
    return _class_names(model, _read_model(model.path))


def _class_names(model: ModelConfig, onnx_model: onnx.ModelProto) -> list[str]:
    """Names from `names_file`, else the model's metadata."""
    if model.names_file is not None:
        try:
            lines = model.names_file.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ModelUnavailable(
                f"{model.names_file}: cannot read class names ({exc.strerror}); "
                "fix model.names_file") from None
        return [line.strip() for line in lines if line.strip()]
    names = read_class_names(onnx_model)
    if not names:
        raise ConfigError(
            f"{model.path}: the model carries no class names; set model.names_file "
            "to a file with one name per line")
    return names


def _read_model(path: Path) -> onnx.ModelProto:
    if not path.is_file():
        raise ModelUnavailable(
            f"{path}: model file not found; set model.path or run `make setup`")
    try:
        return onnx.load(str(path), load_external_data=False)
    except OSError as exc:
        raise ModelUnavailable(f"{path}: cannot read model ({exc.strerror})") from None
    except Exception as exc:  # protobuf raises its own DecodeError family
        raise ModelUnavailable(
            f"{path}: not a valid ONNX model ({type(exc).__name__}); re-export or re-download it"
        ) from None


def with_model_ladder(config: Config, facts: ModelFacts) -> Config:
    """Unless the config sets `thermal.modes`, fit the default ladder to the model's size."""
    if "modes" in config.thermal.model_fields_set:
        return config
    sizes = ladder(facts.input_size)
    modes = [mode.model_copy(update={"input_size": size})
             for mode, size in zip(config.thermal.modes, sizes, strict=True)]
    return config.model_copy(update={"thermal": config.thermal.model_copy(
        update={"modes": modes})})


def check(config: Config) -> tuple[Config, ModelFacts]:
    """Validate what config validation alone cannot see; returns the config to run with."""
    facts = model_facts(config.model)
    for size, path in config.models.items():
        if model_facts(config.model.model_copy(update={"path": path})).names != facts.names:
            raise ConfigError(f"models.{size}: {path} has other classes than model.path")
    for source in config.sources:
        unknown = sorted(set(source.classes or []) - set(facts.names))
        if unknown:
            raise ConfigError(
                f"source {source.name}: classes {', '.join(unknown)} not among the model's "
                f"classes (e.g. {', '.join(facts.names[:5])}); fix the names or use "
                "model.names_file")
        if source.kind == "file" and not Path(source.uri).is_file():
            raise SourceUnavailable(
                f"{source.uri}: video file not found; fix the uri of source {source.name}")
    # An explicit backend that cannot run is exit 69 now, before any worker starts.
    selection = select_backend(config.model)
    facts = dataclasses.replace(facts, backend=selection.backend,
                                backend_reason=selection.reason)
    return with_model_ladder(config, facts), facts

"""Checks made once before any worker starts, so a bad model or source fails fast and clearly."""

from __future__ import annotations

from pathlib import Path

import onnx

from edged.backends.base import ModelUnavailable
from edged.config import Config, ConfigError, ModelConfig
from edged.tools.model_info import read_class_names


class SourceUnavailable(Exception):
    """The configured source can never work as given (e.g. a video file that is not there)."""


def load_class_names(model: ModelConfig) -> list[str]:
    """Names from `names_file`, else the model's metadata (never guessed)."""
    onnx_model = _read_model(model.path)
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


def check(config: Config) -> list[str]:
    """Validate what config validation alone cannot see; returns the class names."""
    names = load_class_names(config.model)
    unknown = sorted(set(config.source.classes or []) - set(names))
    if unknown:
        raise ConfigError(
            f"source.classes: {', '.join(unknown)} not among the model's classes "
            f"(e.g. {', '.join(names[:5])}); fix the names or use model.names_file")
    if config.source.kind == "file" and not Path(config.source.uri).is_file():
        raise SourceUnavailable(f"{config.source.uri}: video file not found; fix source.uri")
    return names

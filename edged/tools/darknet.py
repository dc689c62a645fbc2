"""Import a darknet YOLO (cfg + weights) as an ONNX model with the YOLO decode in the graph.

Only numpy and onnx are needed. The result takes ``images`` float32 [1, 3, H, W] (RGB, /255,
H and W any multiple of 32) and emits ``output0`` (1, N, 5 + nc): rows of
[cx, cy, w, h, objectness, class scores...] in input pixels (YOLOv5 layout), class scores NOT
multiplied by objectness. Metadata follows Ultralytics' conventions so one reader serves both.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path

import onnx
import structlog

from edged.tools.darknet_cfg import (
    DarknetImportError,
    LayerSpec,
    YoloSpec,
    parse_cfg,
    read_weights,
)
from edged.tools.darknet_graph import build_model

__all__ = ["IMPORTER_VERSION", "DarknetImportError", "import_darknet"]

# Bump when the graph or metadata an import produces changes, so stale models can be spotted.
IMPORTER_VERSION = "edged-darknet/1"
DEFAULT_NAMES_FILE = "coco.names"

log = structlog.get_logger()


def _read_names(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DarknetImportError(f"{path}: cannot read class names: {exc}") from exc
    return [line.strip() for line in lines if line.strip()]


def _class_names(cfg: Path, names_file: Path | None, nc: int) -> list[str]:
    if names_file is not None:
        names = _read_names(names_file)
        if len(names) != nc:
            raise DarknetImportError(
                f"{names_file}: has {len(names)} class names, the cfg's [yolo] has classes={nc}"
            )
        return names
    default = cfg.with_name(DEFAULT_NAMES_FILE)
    if default.is_file():
        names = _read_names(default)
        if len(names) == nc:
            return names
        # An unrelated coco.names beside a custom cfg must not fail the import.
        log.warning("darknet.names_mismatch", path=str(default), names=len(names), classes=nc)
    return [f"class_{i}" for i in range(nc)]


def _metadata(
    cfg: Path, height: int, width: int, names: list[str], layers: list[LayerSpec]
) -> dict[str, str]:
    heads = [layer for layer in layers if isinstance(layer, YoloSpec)]
    return {
        # str(dict) is exactly how Ultralytics writes `names`, e.g. "{0: 'person', 1: 'bicycle'}".
        "names": str(dict(enumerate(names))),
        "imgsz": str([height, width]),
        "stride": str(max(h.stride for h in heads)),
        "layout": "yolov5",
        "source": f"darknet:{cfg.name}",
        "edged_importer": IMPORTER_VERSION,
    }


def _save_atomic(model: onnx.ModelProto, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    # Not mkstemp: its 0600 mode would stick to the model; a unique name in the same directory
    # is enough for an atomic os.replace.
    tmp = out.with_name(f".{out.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        onnx.save_model(model, tmp)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def import_darknet(
    cfg: Path,
    weights: Path,
    out: Path,
    names_file: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Convert ``cfg`` + ``weights`` to ONNX at ``out`` (written atomically) and return ``out``.

    ``names_file`` holds one class name per line; without it ``coco.names`` beside the cfg is
    used when its count matches, else ``class_N``. ``progress(done, total)`` is called once per
    cfg layer. Raises :class:`DarknetImportError` for unsupported or inconsistent inputs.
    """
    cfg, weights, out = Path(cfg), Path(weights), Path(out)
    net, layers = parse_cfg(cfg)
    params = read_weights(weights, layers)
    nc = next(layer.classes for layer in layers if isinstance(layer, YoloSpec))
    names = _class_names(cfg, None if names_file is None else Path(names_file), nc)

    model = build_model(net, layers, params, progress)
    model.producer_name = "edged"
    model.producer_version = IMPORTER_VERSION
    model.doc_string = f"Imported from darknet {cfg.name} + {weights.name}"
    onnx.helper.set_model_props(model, _metadata(cfg, net.height, net.width, names, layers))
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        # Reaching this is an importer bug, not bad input; keep the message to one line.
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DarknetImportError(f"{cfg}: generated graph failed onnx.checker: {first}") from exc
    _save_atomic(model, out)
    log.info("darknet.imported", cfg=str(cfg), out=str(out), layers=len(layers), classes=nc)
    return out

"""Describe a detector ONNX file: I/O shapes, output layout, classes, input size.

Uses ``onnx`` only (no runtime), so it works on a machine that cannot run the model.
"""

from __future__ import annotations

import ast
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper

__all__ = ["ModelInfoError", "describe_model", "format_model_info", "read_class_names"]

Dim = int | str


class ModelInfoError(ValueError):
    """The file is missing or not a readable ONNX model; the message is one line."""


def _metadata(model: onnx.ModelProto | Mapping[str, str]) -> Mapping[str, str]:
    if isinstance(model, onnx.ModelProto):
        return {p.key: p.value for p in model.metadata_props}
    return model


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        pass
    try:
        return json.loads(text)
    except ValueError:
        return None


def read_class_names(model: onnx.ModelProto | Mapping[str, str]) -> list[str] | None:
    """Class names from the ``names`` metadata, or None when absent or unparseable.

    Accepts Ultralytics' dict string (``{0: 'person', 1: 'bicycle'}``), a JSON object with
    string keys, or a list (Python or JSON). Gaps in dict keys become ``class_N``.
    """
    text = _metadata(model).get("names")
    if text is None:
        return None
    value = _literal(text)
    if isinstance(value, list | tuple):
        return [str(v) for v in value]
    if not isinstance(value, dict) or not value:
        return None
    try:
        by_id = {int(k): str(v) for k, v in value.items()}
    except (TypeError, ValueError):
        return None
    if min(by_id) < 0:
        return None
    return [by_id.get(i, f"class_{i}") for i in range(max(by_id) + 1)]


def _dims(value: onnx.ValueInfoProto) -> list[Dim] | None:
    tensor = value.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    dims: list[Dim] = []
    for d in tensor.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        else:
            dims.append(d.dim_param or "?")
    return dims


def _dtype(elem_type: int) -> str:
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).name
    except (KeyError, TypeError, ValueError):
        return onnx.TensorProto.DataType.Name(elem_type).lower()


def _io(values: Any, skip: set[str]) -> list[dict[str, Any]]:
    return [
        {"name": v.name, "shape": _dims(v), "dtype": _dtype(v.type.tensor_type.elem_type)}
        for v in values
        if v.name not in skip
    ]


def _layout(meta: Mapping[str, str], shape: list[Dim] | None, nc: int | None) -> str | None:
    if meta.get("layout") in ("yolov5", "yolov8"):
        return meta["layout"]
    if shape is None or len(shape) != 3:
        return None
    _, d1, d2 = shape
    if nc is not None:
        # Known class count: the box dimension is 4+nc (YOLOv8) or 5+nc (YOLOv5); anything
        # else (e.g. an end-to-end NMS export) is neither.
        if d1 == 4 + nc:
            return "yolov8"
        if d2 == 5 + nc:
            return "yolov5"
        return None
    if isinstance(d1, int) and isinstance(d2, int):
        return "yolov8" if d1 < d2 else "yolov5"  # there are always more boxes than channels
    if isinstance(d1, int):
        return "yolov8"
    if isinstance(d2, int):
        return "yolov5"
    return None


def _imgsz(meta: Mapping[str, str], input_shape: list[Dim] | None) -> list[int] | None:
    value = _literal(meta["imgsz"]) if "imgsz" in meta else None
    if isinstance(value, int):
        return [value, value]
    pair = isinstance(value, list | tuple) and len(value) == 2
    if pair and all(isinstance(v, int) for v in value):
        return [int(v) for v in value]
    if input_shape and len(input_shape) == 4:
        h, w = input_shape[2], input_shape[3]
        if isinstance(h, int) and isinstance(w, int):
            return [h, w]
    return None


def describe_model(path: Path) -> dict[str, Any]:
    """A JSON-serialisable summary of the ONNX model at ``path``; raises ModelInfoError."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelInfoError(f"{path}: cannot read model: {exc.strerror or exc}") from exc
    try:
        # Parsing bytes never follows external-data references, so a stray path cannot be read.
        model = onnx.load_model_from_string(data)
    except Exception as exc:  # protobuf raises several unrelated types on garbage
        raise ModelInfoError(f"{path}: not a valid ONNX model ({type(exc).__name__})") from exc
    graph = model.graph
    if not model.opset_import or not graph.input or not graph.output:
        raise ModelInfoError(f"{path}: not a valid ONNX model (no graph inputs/outputs)")

    meta = _metadata(model)
    initializers = {t.name for t in graph.initializer}
    inputs = _io(graph.input, initializers)
    outputs = _io(graph.output, set())
    names = read_class_names(meta)
    nc = len(names) if names is not None else None
    out_shape = outputs[0]["shape"]
    layout = _layout(meta, out_shape, nc)
    if nc is None and layout is not None and out_shape is not None:
        box_dim = out_shape[2] if layout == "yolov5" else out_shape[1]
        if isinstance(box_dim, int):
            nc = box_dim - (5 if layout == "yolov5" else 4)
    in_shape = inputs[0]["shape"] if inputs else None
    dynamic = bool(
        in_shape and len(in_shape) == 4 and not all(isinstance(d, int) for d in in_shape[2:])
    )
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    return {
        "path": str(path),
        "size_bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "inputs": inputs,
        "outputs": outputs,
        "layout": layout,
        "num_classes": nc,
        "names": names,
        "imgsz": _imgsz(meta, in_shape),
        "dynamic": dynamic,
        "opset": opset,
        "metadata": dict(meta),
    }


def _shape_text(shape: list[Dim] | None) -> str:
    return "?" if shape is None else "[" + ", ".join(str(d) for d in shape) + "]"


def format_model_info(info: Mapping[str, Any]) -> str:
    """A few human-readable lines for ``edged model info``."""
    mb = info["size_bytes"] / 1e6
    lines = [f"model:   {info['path']} ({mb:.1f} MB, sha256 {info['sha256'][:16]}...)"]
    for key in ("inputs", "outputs"):
        for io in info[key]:
            label = key[:-1] + ":"
            lines.append(f"{label:<8} {io['name']} {io['dtype']} {_shape_text(io['shape'])}")
    imgsz = info["imgsz"]
    size = f"{imgsz[0]}x{imgsz[1]}" if imgsz else "unknown"
    lines.append(
        f"layout:  {info['layout'] or 'unknown'}, imgsz {size}"
        f" ({'dynamic' if info['dynamic'] else 'fixed'} input), opset {info['opset']}"
    )
    names = info["names"]
    if names:
        shown = ", ".join(names[:8]) + (f", ... (+{len(names) - 8})" if len(names) > 8 else "")
        lines.append(f"classes: {len(names)}: {shown}")
    else:
        lines.append(f"classes: {info['num_classes'] if info['num_classes'] is not None else '?'}")
    return "\n".join(lines)

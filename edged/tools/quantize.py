"""`edged quantize`: INT8 ONNX models for ONNX Runtime, dynamic or static (QDQ, calibrated).

- dynamic: weights to uint8 offline, activations quantized per frame at run time (ConvInteger).
  No calibration data; the cheapest to make.
- static: QDQ format, per-channel int8 weights, uint8 activations whose ranges come from
  calibration frames letterboxed exactly as the runtime does (`Letterboxer`), so the ranges
  the model sees at calibration are the ones it sees in the daemon.

The YOLO decode that edged's darknet importer appends (sigmoid/exp of the head, grid offsets,
anchor scaling and the final concat of both heads into (1, N, 85)) stays in float: those nodes
mix box pixels (0..640) and probabilities (0..1) in one tensor, and one uint8 scale for both
would erase either the box precision or the scores. They are found structurally: every node
from which no Conv is reachable (the tail after the last convolution of each head).
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import structlog

from edged.tools.eval import Frames
from edged.vision.letterbox import Letterboxer

log = structlog.get_logger(__name__)

Mode = Literal["dynamic", "static"]
MAX_CALIBRATION_FRAMES = 32


class QuantizeError(Exception):
    """Quantization cannot run as asked; str() is one line with the fix."""


def default_output(model: Path, mode: Mode) -> Path:
    return model.with_name(f"{model.stem}.int8-{mode}.onnx")


def decode_tail_nodes(model: onnx.ModelProto, exclude_head: bool = False) -> list[str]:
    """Names of the nodes after the last Conv of every path to the output (the decode).

    `exclude_head` also keeps the head convolutions (those whose output feeds only the
    decode) in float: their 255 output channels mix box and class logits in one tensor.
    """
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    reaches_conv: dict[int, bool] = {}
    # Graph nodes are topologically sorted: walking backwards, every consumer is settled.
    for node in reversed(model.graph.node):
        reaches_conv[id(node)] = any(
            c.op_type == "Conv" or reaches_conv.get(id(c), False)
            for out in node.output for c in consumers.get(out, [])
        )
    return [
        n.name for n in model.graph.node
        if not reaches_conv[id(n)] and (n.op_type != "Conv" or exclude_head)
    ]


class LetterboxReader:
    """ORT CalibrationDataReader over frames letterboxed like the runtime does."""

    def __init__(self, frames: Frames, size: int, input_name: str) -> None:
        self._frames, self._size, self._name = frames, size, input_name
        self._it: Iterator[dict[str, np.ndarray]] = iter(())
        self.rewind()

    def _tensors(self) -> Iterator[dict[str, np.ndarray]]:
        letterboxer = Letterboxer(self._size)
        for image in self._frames.images:
            letterboxer.letterbox(image)
            yield {self._name: letterboxer.tensor.copy()}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = self._tensors()


def float_nodes(model: onnx.ModelProto, head: bool = True, first: bool = True) -> list[str]:
    """The nodes static quantization leaves in float: the decode, and by default the head
    convolutions and the first convolution (raw pixels, 3 channels: ~3% of YOLOv3-tiny's
    FLOPs). On YOLOv3-tiny / vtest.avi keeping both raised mAP50-95 agreement 0.77 -> 0.83."""
    names = decode_tail_nodes(model, exclude_head=head)
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    if first and convs and convs[0] not in names:
        names.append(convs[0])
    return names


def cpu_has_vnni() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags.split() for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


def want_reduce_range() -> bool:
    """7-bit weights on x86 without VNNI.

    There ORT's u8s8 kernels use VPMADDUBSW, which adds two u8 x s8 products into a
    saturating int16: full-range int8 weights overflow it. Measured on this Zen 1 VM:
    mAP50 agreement 0.57 with 8-bit weights, 0.91 with 7-bit. VNNI (VPDPBUSD) accumulates in
    int32 and ARM's SDOT likewise, so there the full 8 bits are kept.
    """
    import platform

    return platform.machine() in ("x86_64", "AMD64", "i686") and not cpu_has_vnni()


def quantize(
    model_path: Path, out: Path, mode: Mode, *, calibration: Frames | None = None,
    size: int = 416, float_head: bool = True, float_first: bool = True,
    reduce_range: bool | None = None, method: str = "minmax",
) -> dict[str, Any]:
    """Write the INT8 model to `out`; returns facts for the report (no timing here).

    `reduce_range` None decides by the CPU running this (see `want_reduce_range`): quantize
    on the kind of board that will run the model.
    """
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    model_path, out = Path(model_path), Path(out)
    try:
        model = onnx.load(str(model_path))
    except Exception as exc:
        raise QuantizeError(f"{model_path}: not a readable ONNX model ({exc})") from None
    _name_nodes(model)
    if reduce_range is None:
        reduce_range = mode == "static" and want_reduce_range()
    excluded = (float_nodes(model, float_head, float_first) if mode == "static"
                else decode_tail_nodes(model))
    input_name = model.graph.input[0].name
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    facts: dict[str, Any] = {"mode": mode, "source": str(model_path), "out": str(out),
                             "float_nodes": len(excluded), "reduce_range": reduce_range}
    with tempfile.TemporaryDirectory(prefix="edged-quant-") as tmp, _quiet_root_logger():
        named = Path(tmp) / "named.onnx"
        onnx.save(model, str(named))
        if mode == "dynamic":
            # ConvInteger on the CPU EP needs uint8 weights; per-tensor is what it supports.
            # u8 x u8 does not go through VPMADDUBSW, so no reduced range here (it cost
            # recall: 0.98 -> 0.90 at conf 0.5 on vtest.avi).
            quantize_dynamic(named, out, weight_type=QuantType.QUInt8,
                             nodes_to_exclude=excluded)
        else:
            if calibration is None or not len(calibration):
                raise QuantizeError("static quantization needs calibration frames "
                                    "(--calib-video or --calib-images)")
            if len(calibration) > MAX_CALIBRATION_FRAMES:
                calibration = Frames(calibration.ids[:MAX_CALIBRATION_FRAMES],
                                     calibration.images[:MAX_CALIBRATION_FRAMES])
            methods = {"minmax": CalibrationMethod.MinMax,
                       "entropy": CalibrationMethod.Entropy,
                       "percentile": CalibrationMethod.Percentile}
            quantize_static(
                named, out, LetterboxReader(calibration, size, input_name),
                quant_format=QuantFormat.QDQ, per_channel=True,
                # U8S8: the combination ORT's x86 (VPMADDUBSW / VNNI) and ARM (SDOT) int8
                # kernels are built for.
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                reduce_range=reduce_range, nodes_to_exclude=excluded,
                calibrate_method=methods[method],
                calibration_providers=["CPUExecutionProvider"],
            )
            facts |= {"calibration_frames": len(calibration), "calibration_size": size,
                      "calibration_ids": calibration.ids, "method": method,
                      "float_head": float_head, "float_first": float_first}
    _copy_metadata(model_path, out)
    facts |= {"seconds": round(time.perf_counter() - started, 1),
              "bytes": out.stat().st_size, "source_bytes": model_path.stat().st_size}
    log.info("quantize.done", **{k: v for k, v in facts.items() if k != "calibration_ids"})
    return facts


def _name_nodes(model: onnx.ModelProto) -> None:
    # Exclusion goes by node name; exports from some tools leave names empty.
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"


def _copy_metadata(source: Path, out: Path) -> None:
    """Keep class names, layout and imgsz: the quantizer does not always carry them over."""
    src = onnx.load(str(source), load_external_data=False)
    dst = onnx.load(str(out))
    have = {p.key for p in dst.metadata_props}
    missing = [p for p in src.metadata_props if p.key not in have]
    if missing:
        dst.metadata_props.extend(missing)
        onnx.save(dst, str(out))


class _quiet_root_logger:
    """ORT's quantizer warns through the root logger ("consider pre-processing"); mute it."""

    def __enter__(self) -> None:
        self._level = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)

    def __exit__(self, *exc: object) -> None:
        logging.getLogger().setLevel(self._level)

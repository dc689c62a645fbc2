"""Build the ONNX graph for parsed darknet layers, YOLO decode included.

The graph input is ``images`` float32 [1, 3, height, width] (RGB, /255) with symbolic height and
width, so every shape that depends on the input (grid sizes, strides) is computed with Shape ops
rather than baked in. The single output ``output0`` is (1, N, 5 + nc) in YOLOv5 layout.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edged.tools.darknet_cfg import (
    ConvParams,
    ConvSpec,
    LayerSpec,
    MaxPoolSpec,
    NetSpec,
    RouteSpec,
    UpsampleSpec,
    YoloSpec,
)

OPSET = 17
# IR 8 is the oldest that carries opset 17; older runtimes (ORT 1.18, TensorRT, pnnx) reject newer.
IR_VERSION = 8
INPUT_NAME = "images"
OUTPUT_NAME = "output0"


class _Builder:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._consts: dict[tuple[str, bytes, tuple[int, ...]], str] = {}
        self._count = 0

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, value: np.ndarray, hint: str = "const") -> str:
        key = (str(value.dtype), value.tobytes(), value.shape)
        if key not in self._consts:
            name = self.fresh(hint)
            self.initializers.append(numpy_helper.from_array(value, name))
            self._consts[key] = name
        return self._consts[key]

    def ints(self, *values: int) -> str:
        return self.const(np.array(values, np.int64))

    def op(
        self, op_type: str, inputs: list[str], hint: str = "", out: str = "", **attrs: object
    ) -> str:
        name = out or self.fresh(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [name], name=name, **attrs))
        return name


def _conv(b: _Builder, x: str, spec: ConvSpec, params: ConvParams) -> str:
    w = b.const(params.weight, f"conv{spec.index}.weight")
    bias = b.const(params.bias, f"conv{spec.index}.bias")
    y = b.op(
        "Conv",
        [x, w, bias],
        f"conv{spec.index}",
        kernel_shape=[spec.size] * 2,
        strides=[spec.stride] * 2,
        pads=[spec.pad] * 4,
        group=spec.groups,
    )
    if spec.activation == "leaky":
        return b.op("LeakyRelu", [y], f"leaky{spec.index}", alpha=0.1)
    if spec.activation == "logistic":
        return b.op("Sigmoid", [y], f"sigmoid{spec.index}")
    if spec.activation == "relu":
        return b.op("Relu", [y], f"relu{spec.index}")
    return y  # linear


def _maxpool(b: _Builder, x: str, spec: MaxPoolSpec) -> str:
    # Darknet puts padding//2 before and the rest after (so size 2 stride 1 pads right/bottom),
    # which keeps its output size (w + padding - size) // stride + 1.
    before, after = spec.padding // 2, spec.padding - spec.padding // 2
    return b.op(
        "MaxPool",
        [x],
        f"maxpool{spec.index}",
        kernel_shape=[spec.size] * 2,
        strides=[spec.stride] * 2,
        pads=[before, before, after, after],
    )


def _upsample(b: _Builder, x: str, spec: UpsampleSpec) -> str:
    scales = b.const(np.array([1, 1, spec.stride, spec.stride], np.float32))
    # asymmetric + floor copies each source pixel exactly stride x stride times, like darknet.
    return b.op(
        "Resize",
        [x, "", scales],
        f"upsample{spec.index}",
        mode="nearest",
        coordinate_transformation_mode="asymmetric",
        nearest_mode="floor",
    )


def _decode(b: _Builder, x: str, spec: YoloSpec, image_hw: str) -> str:
    """[1, A*(5+nc), h, w] raw head -> [1, A*h*w, 5+nc] boxes in input pixels."""
    na, ch = len(spec.anchors), 5 + spec.classes
    tag = f"yolo{spec.index}"
    grid_hw = b.op("Slice", [b.op("Shape", [x]), b.ints(2), b.ints(4)], f"{tag}.grid_hw")
    # Scalar indices give scalar h and w: Range only accepts scalar bounds.
    h = b.op("Gather", [grid_hw, b.const(np.array(0, np.int64))])
    w = b.op("Gather", [grid_hw, b.const(np.array(1, np.int64))])
    # Rows follow darknet's memory order (anchor, y, x), the same as YOLOv5 exports.
    flat = b.op("Reshape", [x, b.ints(1, na, ch, -1)], f"{tag}.flat")
    cell = b.op(
        "Range",
        [b.const(np.array(0, np.int64)), b.op("Mul", [h, w]), b.const(np.array(1, np.int64))],
        f"{tag}.cell",
    )
    gx = b.op("Mod", [cell, w])
    gy = b.op("Div", [cell, w])
    grid = b.op("Concat", [gx, gy], axis=0)
    grid = b.op(
        "Cast", [b.op("Reshape", [grid, b.ints(1, 1, 2, -1)])], f"{tag}.grid", to=TensorProto.FLOAT
    )
    # Per-axis stride = input size / grid size; both come from the live input shape.
    stride_yx = b.op(
        "Div",
        [
            b.op("Cast", [image_hw], to=TensorProto.FLOAT),
            b.op("Cast", [grid_hw], to=TensorProto.FLOAT),
        ],
    )
    stride_xy = b.op("Gather", [stride_yx, b.ints(1, 0)])
    stride_xy = b.op("Reshape", [stride_xy, b.ints(1, 1, 2, 1)], f"{tag}.stride")

    xy = b.op("Sigmoid", [b.op("Slice", [flat, b.ints(0), b.ints(2), b.ints(2)])])
    if spec.scale_x_y != 1.0:
        s = spec.scale_x_y
        xy = b.op(
            "Add",
            [
                b.op("Mul", [xy, b.const(np.array(s, np.float32))]),
                b.const(np.array(-(s - 1) / 2, np.float32)),
            ],
        )
    xy = b.op("Mul", [b.op("Add", [xy, grid]), stride_xy], f"{tag}.xy")
    anchors = np.array(spec.anchors, np.float32).reshape(1, na, 2, 1)
    wh = b.op("Exp", [b.op("Slice", [flat, b.ints(2), b.ints(4), b.ints(2)])])
    wh = b.op("Mul", [wh, b.const(anchors, f"{tag}.anchors")], f"{tag}.wh")
    # Class scores stay plain sigmoids; the runtime decoder multiplies by objectness.
    conf = b.op("Sigmoid", [b.op("Slice", [flat, b.ints(4), b.ints(ch), b.ints(2)])])
    rows = b.op("Concat", [xy, wh, conf], axis=2)
    rows = b.op("Transpose", [rows], perm=[0, 1, 3, 2])
    return b.op("Reshape", [rows, b.ints(1, -1, ch)], f"{tag}.rows")


def build_model(
    net: NetSpec,
    layers: list[LayerSpec],
    params: list[ConvParams],
    progress: Callable[[int, int], None] | None = None,
) -> onnx.ModelProto:
    b = _Builder()
    image_hw = b.op("Slice", [b.op("Shape", [INPUT_NAME]), b.ints(2), b.ints(4)], "image_hw")
    outputs: list[str] = []
    heads: list[str] = []
    conv_params = iter(params)
    x = INPUT_NAME
    for done, spec in enumerate(layers, start=1):
        if isinstance(spec, ConvSpec):
            x = _conv(b, x, spec, next(conv_params))
        elif isinstance(spec, MaxPoolSpec):
            x = _maxpool(b, x, spec)
        elif isinstance(spec, UpsampleSpec):
            x = _upsample(b, x, spec)
        elif isinstance(spec, RouteSpec):
            srcs = [outputs[i] for i in spec.layers]
            x = srcs[0] if len(srcs) == 1 else b.op("Concat", srcs, f"route{spec.index}", axis=1)
        else:
            heads.append(_decode(b, x, spec, image_hw))
        outputs.append(x)
        if progress is not None:
            progress(done, len(layers))
    nc = next(s.classes for s in layers if isinstance(s, YoloSpec))
    if len(heads) == 1:
        b.op("Identity", heads, out=OUTPUT_NAME)
    else:
        b.op("Concat", heads, out=OUTPUT_NAME, axis=1)

    graph = helper.make_graph(
        b.nodes,
        "darknet",
        [
            helper.make_tensor_value_info(
                INPUT_NAME, TensorProto.FLOAT, [1, net.channels, "height", "width"]
            )
        ],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [1, "boxes", 5 + nc])],
        b.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    return model

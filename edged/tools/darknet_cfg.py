"""Parse a darknet ``.cfg`` into typed layer specs and read the matching ``.weights`` file.

Pure numpy; the ONNX graph is built in :mod:`edged.tools.darknet_graph`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class DarknetImportError(ValueError):
    """A cfg/weights pair this importer cannot convert; the message is one line.

    Sections are numbered as darknet numbers its layers (0 = the first after [net]), which is
    also what [route] layers= refers to; the message gives the line number as well.
    """


@dataclass(frozen=True)
class Section:
    kind: str
    index: int  # darknet layer index (0-based, [net] excluded): what [route] refers to
    line: int
    options: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class NetSpec:
    width: int
    height: int
    channels: int


@dataclass(frozen=True)
class ConvSpec:
    index: int
    in_channels: int
    filters: int
    size: int
    stride: int
    pad: int
    groups: int
    batch_normalize: bool
    activation: str


@dataclass(frozen=True)
class MaxPoolSpec:
    index: int
    size: int
    stride: int
    padding: int


@dataclass(frozen=True)
class UpsampleSpec:
    index: int
    stride: int


@dataclass(frozen=True)
class RouteSpec:
    index: int
    layers: tuple[int, ...]  # absolute layer indexes


@dataclass(frozen=True)
class YoloSpec:
    index: int
    anchors: tuple[tuple[float, float], ...]  # only the masked anchors, in mask order
    classes: int
    scale_x_y: float
    stride: int  # input pixels per grid cell at the cfg's input size


LayerSpec = ConvSpec | MaxPoolSpec | UpsampleSpec | RouteSpec | YoloSpec

SUPPORTED_ACTIVATIONS = ("leaky", "linear", "logistic", "relu")


@dataclass(frozen=True)
class ConvParams:
    """A conv layer's weights with batch norm already folded in."""

    weight: np.ndarray  # float32 (filters, in_channels / groups, size, size)
    bias: np.ndarray  # float32 (filters,)


def read_sections(cfg: Path) -> list[Section]:
    try:
        text = cfg.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DarknetImportError(f"{cfg}: cannot read cfg: {exc}") from exc
    sections: list[Section] = []
    current: Section | None = None
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise DarknetImportError(f"{cfg}: line {lineno}: malformed section header {line!r}")
            # [net] is not a layer, so it gets index -1 and layers count from 0 as in darknet.
            index = len(sections) - 1 if sections else -1
            current = Section(line[1:-1].strip().lower(), index, lineno)
            sections.append(current)
            continue
        if current is None or "=" not in line:
            raise DarknetImportError(f"{cfg}: line {lineno}: expected key=value, got {line!r}")
        key, value = line.split("=", 1)
        current.options[key.strip()] = value.strip()
    if not sections or sections[0].kind not in ("net", "network"):
        raise DarknetImportError(f"{cfg}: the first section must be [net]")
    return sections


class _Reader:
    """Typed option access whose errors name the file, section and line."""

    def __init__(self, cfg: Path, section: Section) -> None:
        self.cfg = cfg
        self.section = section

    def fail(self, reason: str) -> DarknetImportError:
        s = self.section
        where = "[net]" if s.index < 0 else f"section {s.index} [{s.kind}]"
        return DarknetImportError(f"{self.cfg}: {where} at line {s.line}: {reason}")

    def get_int(self, key: str, default: int | None = None) -> int:
        value = self.section.options.get(key)
        if value is None:
            if default is None:
                raise self.fail(f"missing required option {key!r}")
            return default
        try:
            return int(value)
        except ValueError:
            raise self.fail(f"option {key!r} is not an integer: {value!r}") from None

    def get_float(self, key: str, default: float) -> float:
        value = self.section.options.get(key)
        if value is None:
            return default
        try:
            return float(value)
        except ValueError:
            raise self.fail(f"option {key!r} is not a number: {value!r}") from None

    def numbers(self, key: str) -> list[float]:
        value = self.section.options.get(key, "")
        try:
            return [float(v) for v in value.split(",") if v.strip()]
        except ValueError:
            raise self.fail(f"option {key!r} is not a list of numbers: {value!r}") from None

    def reject(self, key: str, allowed: str) -> None:
        value = self.section.options.get(key)
        if value is not None and value != allowed:
            raise self.fail(f"unsupported option {key}={value}")


def parse_cfg(cfg: Path) -> tuple[NetSpec, list[LayerSpec]]:
    """Validate the cfg and resolve channel counts, strides and route targets."""
    sections = read_sections(cfg)
    net_r = _Reader(cfg, sections[0])
    net = NetSpec(net_r.get_int("width"), net_r.get_int("height"), net_r.get_int("channels", 3))
    layers: list[LayerSpec] = []
    channels: list[int] = []
    strides: list[int] = []  # input pixels per output cell, at the cfg's input size
    for section in sections[1:]:
        r = _Reader(cfg, section)
        idx = section.index
        c_in = channels[-1] if channels else net.channels
        s_in = strides[-1] if strides else 1
        spec: LayerSpec
        if section.kind in ("convolutional", "conv"):
            for key in ("binary", "xnor", "dilation"):
                r.reject(key, "0" if key != "dilation" else "1")
            size = r.get_int("size", 1)
            groups = r.get_int("groups", 1)
            activation = section.options.get("activation", "logistic")
            if activation not in SUPPORTED_ACTIVATIONS:
                raise r.fail(f"unsupported activation {activation!r}")
            filters = r.get_int("filters", 1)
            if groups < 1 or c_in % groups or filters % groups:
                raise r.fail(f"groups={groups} does not divide {c_in} inputs / {filters} filters")
            pad = size // 2 if r.get_int("pad", 0) else r.get_int("padding", 0)
            spec = ConvSpec(
                idx,
                c_in,
                filters,
                size,
                r.get_int("stride", 1),
                pad,
                groups,
                bool(r.get_int("batch_normalize", 0)),
                activation,
            )
            c_out, s_out = filters, s_in * spec.stride
        elif section.kind in ("maxpool", "max"):
            r.reject("maxpool_depth", "0")
            size = r.get_int("size", 1)
            spec = MaxPoolSpec(idx, size, r.get_int("stride", 1), r.get_int("padding", size - 1))
            c_out, s_out = c_in, s_in * spec.stride
        elif section.kind == "upsample":
            r.reject("scale", "1")
            spec = UpsampleSpec(idx, r.get_int("stride", 2))
            if spec.stride < 1 or s_in % spec.stride:
                raise r.fail(f"unsupported upsample stride {spec.stride}")
            c_out, s_out = c_in, s_in // spec.stride
        elif section.kind in ("route", "concat"):
            r.reject("groups", "1")
            refs = tuple(int(v) for v in r.numbers("layers"))
            absolute = tuple(idx + v if v < 0 else v for v in refs)
            if not absolute or any(a < 0 or a >= idx for a in absolute):
                raise r.fail(f"layers={section.options.get('layers')} must name earlier layers")
            if any(isinstance(layers[a], YoloSpec) for a in absolute):
                raise r.fail("routing from a [yolo] layer is not supported")
            if len({strides[a] for a in absolute}) != 1:
                raise r.fail("routed layers have different spatial sizes")
            spec = RouteSpec(idx, absolute)
            c_out, s_out = sum(channels[a] for a in absolute), strides[absolute[0]]
        elif section.kind == "yolo":
            r.reject("new_coords", "0")
            classes = r.get_int("classes", 20)
            flat = r.numbers("anchors")
            pairs = [(flat[i], flat[i + 1]) for i in range(0, len(flat) - 1, 2)]
            mask = [int(m) for m in r.numbers("mask")] or list(range(len(pairs)))
            if any(m < 0 or m >= len(pairs) for m in mask):
                raise r.fail(f"mask {mask} does not fit {len(pairs)} anchors")
            if c_in != len(mask) * (5 + classes):
                raise r.fail(f"input has {c_in} channels, expected {len(mask)}*(5+{classes})")
            spec = YoloSpec(
                idx, tuple(pairs[m] for m in mask), classes, r.get_float("scale_x_y", 1.0), s_in
            )
            c_out, s_out = c_in, s_in
        else:
            raise r.fail("unsupported section type")
        layers.append(spec)
        channels.append(c_out)
        strides.append(s_out)
    heads = [layer for layer in layers if isinstance(layer, YoloSpec)]
    if not heads:
        raise DarknetImportError(f"{cfg}: no [yolo] section; only YOLO detectors are supported")
    if len({h.classes for h in heads}) != 1:
        raise DarknetImportError(f"{cfg}: [yolo] sections disagree on the number of classes")
    return net, layers


def read_weights(weights: Path, layers: list[LayerSpec]) -> list[ConvParams]:
    """Read the weights of every conv layer, in order, folding batch norm into the conv."""
    try:
        blob = weights.read_bytes()
    except OSError as exc:
        raise DarknetImportError(f"{weights}: cannot read weights: {exc}") from exc
    if len(blob) < 16:
        raise DarknetImportError(f"{weights}: {len(blob)} bytes is too short for a header")
    major, minor, _revision = np.frombuffer(blob, "<i4", 3)
    header = 20 if int(major) * 10 + int(minor) >= 2 else 16  # `seen` grew to int64 in 0.2
    convs = [layer for layer in layers if isinstance(layer, ConvSpec)]
    counts = [
        (
            c.filters * (4 if c.batch_normalize else 1),
            c.filters * (c.in_channels // c.groups) * c.size * c.size,
        )
        for c in convs
    ]
    expected = header + 4 * sum(a + b for a, b in counts)
    if len(blob) != expected:
        state = "truncated" if len(blob) < expected else "too long"
        raise DarknetImportError(
            f"{weights}: {state}: the cfg needs {expected} bytes, the file has {len(blob)}"
        )
    floats = np.frombuffer(blob, "<f4", offset=header)
    pos = 0
    params: list[ConvParams] = []
    for conv, (n_bias, n_weight) in zip(convs, counts, strict=True):
        head = floats[pos : pos + n_bias].astype(np.float64)
        weight = floats[pos + n_bias : pos + n_bias + n_weight].astype(np.float64)
        pos += n_bias + n_weight
        weight = weight.reshape(conv.filters, conv.in_channels // conv.groups, conv.size, conv.size)
        if conv.batch_normalize:
            beta, gamma, mean, var = head.reshape(4, conv.filters)
            # Darknet adds its epsilon outside the sqrt (normalize_cpu), not inside as most do.
            scale = gamma / (np.sqrt(var) + 1e-6)
            weight = weight * scale[:, None, None, None]
            bias = beta - mean * scale
        else:
            bias = head
        params.append(ConvParams(weight.astype(np.float32), bias.astype(np.float32)))
    return params

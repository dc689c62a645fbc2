"""Quantization: which nodes stay float, the calibration reader's preprocessing, and the
INT8 models themselves (real YOLOv3-tiny, built once per session)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from edged.backends.onnxruntime import OnnxRuntimeBackend
from edged.config import ModelConfig
from edged.tools import quantize as q
from edged.tools.eval import Frames
from edged.vision.letterbox import Letterboxer
from tests import artifacts


@pytest.fixture(scope="session")
def graph(default_model: Path) -> onnx.ModelProto:
    return onnx.load(str(default_model), load_external_data=False)


def test_decode_tail_is_everything_after_the_last_convs(graph: onnx.ModelProto) -> None:
    tail = set(q.decode_tail_nodes(graph))
    by_name = {n.name: n for n in graph.graph.node}
    final = next(n for n in graph.graph.node if "output0" in n.output)
    assert final.name in tail and final.op_type == "Concat"
    assert {by_name[n].op_type for n in tail} >= {"Sigmoid", "Exp", "Reshape", "Transpose"}
    assert all(by_name[n].op_type != "Conv" for n in tail)
    # Nothing of the backbone: no LeakyRelu, MaxPool or Resize feeds only the decode.
    assert not {by_name[n].op_type for n in tail} & {"LeakyRelu", "MaxPool", "Resize"}


def test_float_nodes_add_the_heads_and_the_first_conv(graph: onnx.ModelProto) -> None:
    convs = [n.name for n in graph.graph.node if n.op_type == "Conv"]
    kept = q.float_nodes(graph)
    heads = [c for c in convs if c in kept and c != convs[0]]
    assert convs[0] in kept
    assert len(heads) == 2  # one 1x1 255-channel conv per YOLO head
    assert set(q.float_nodes(graph, head=False, first=False)) == set(q.decode_tail_nodes(graph))


def test_reduce_range_follows_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    monkeypatch.setattr(q, "cpu_has_vnni", lambda: False)
    assert q.want_reduce_range()
    monkeypatch.setattr(q, "cpu_has_vnni", lambda: True)
    assert not q.want_reduce_range()
    monkeypatch.setattr("platform.machine", lambda: "aarch64")
    monkeypatch.setattr(q, "cpu_has_vnni", lambda: False)
    assert not q.want_reduce_range()


def test_calibration_reader_letterboxes_like_the_runtime(sample_photos: list[Path]) -> None:
    import cv2

    images = [cv2.imread(str(p)) for p in sample_photos[:3]]
    reader = q.LetterboxReader(Frames([p.name for p in sample_photos[:3]], images), 320, "images")
    letterboxer = Letterboxer(320)
    for image in images:
        feed = reader.get_next()
        assert feed is not None
        letterboxer.letterbox(image)
        np.testing.assert_array_equal(feed["images"], letterboxer.tensor)
    assert reader.get_next() is None
    reader.rewind()
    assert reader.get_next() is not None


def test_static_without_frames_is_refused(tmp_path: Path, default_model: Path) -> None:
    with pytest.raises(q.QuantizeError, match="calibration frames"):
        q.quantize(default_model, tmp_path / "x.onnx", "static")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_int8_model_is_smaller_keeps_metadata_and_runs(
    tmp_path_factory: pytest.TempPathFactory, default_model: Path, sample_video: Path,
    mode: str
) -> None:
    path = artifacts.int8_model(tmp_path_factory, default_model, sample_video, mode)
    assert path.name == f"yolov3-tiny.int8-{mode}.onnx"
    assert path.stat().st_size < default_model.stat().st_size * 0.3
    model = onnx.load(str(path))
    ops = {n.op_type for n in model.graph.node}
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["layout"] == "yolov5" and "person" in meta["names"]
    if mode == "static":
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ format
        # Per-channel weights: the scales of a conv's weight have one value per channel.
        scales = [t for t in model.graph.initializer
                  if ".weight" in t.name and t.name.endswith("_scale")]
        assert len(scales) == 10  # 13 convs less the first and the two heads (kept float)
        assert all(len(t.dims) == 1 and t.dims[0] > 1 for t in scales)
        assert model.graph.node[-1].op_type == "Concat"  # the decode stayed float
    else:
        assert "ConvInteger" in ops or "DynamicQuantizeLinear" in ops
    backend = OnnxRuntimeBackend(ModelConfig(path=path, input_size=320))
    backend.load()
    assert backend.input_spec.dynamic  # quantization keeps H/W dynamic
    assert backend.infer(np.zeros((1, 3, 320, 320), np.float32)).shape == (1, 1500, 85)

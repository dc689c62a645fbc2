"""describe_model / read_class_names on the imported YOLOv3-tiny and a real Ultralytics export."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edged.tools.darknet import import_darknet
from edged.tools.model_info import (
    ModelInfoError,
    describe_model,
    format_model_info,
    read_class_names,
)


@pytest.fixture(scope="session")
def imported(
    tmp_path_factory: pytest.TempPathFactory, darknet_files: tuple[Path, Path, Path]
) -> Path:
    cfg, weights, names = darknet_files
    out = tmp_path_factory.mktemp("model_info") / "yolov3-tiny.onnx"
    return import_darknet(cfg, weights, out, names_file=names)


def _stub_model(
    path: Path,
    out_shape: list[int | str],
    meta: dict[str, str] | None = None,
    in_shape: tuple[int | str, ...] = (1, 3, 640, 640),
) -> Path:
    """A one-node model with a detector-like signature, for layout rules no real file covers."""
    node = helper.make_node("ReduceMean", ["images"], ["output0"], keepdims=0)
    graph = helper.make_graph(
        [node],
        "stub",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, list(in_shape))],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, out_shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    helper.set_model_props(model, meta or {})
    onnx.save(model, path)
    return path


def test_imported_darknet_model(imported: Path) -> None:
    info = describe_model(imported)
    json.dumps(info)  # must be JSON-serialisable as is
    assert info["path"] == str(imported)
    assert info["size_bytes"] == imported.stat().st_size
    assert info["sha256"] == hashlib.sha256(imported.read_bytes()).hexdigest()
    assert info["inputs"] == [
        {"name": "images", "shape": [1, 3, "height", "width"], "dtype": "float32"}
    ]
    assert info["outputs"] == [{"name": "output0", "shape": [1, "boxes", 85], "dtype": "float32"}]
    assert info["layout"] == "yolov5"
    assert info["num_classes"] == 80
    assert info["names"][:3] == ["person", "bicycle", "car"] and len(info["names"]) == 80
    assert info["imgsz"] == [416, 416]
    assert info["dynamic"] is True
    assert info["opset"] == 17


def test_ultralytics_yolov8_export(yolov8_model: Path) -> None:
    info = describe_model(yolov8_model)
    json.dumps(info)
    assert info["inputs"] == [{"name": "images", "shape": [1, 3, 640, 640], "dtype": "float32"}]
    assert info["outputs"][0]["shape"] == [1, 6, 8400]
    assert info["layout"] == "yolov8"
    assert info["num_classes"] == 2
    assert info["names"] == ["Normal", "Fall"]
    assert info["imgsz"] == [640, 640]
    assert info["dynamic"] is False
    assert info["metadata"]["task"] == "detect"


def test_format_model_info(imported: Path, yolov8_model: Path) -> None:
    text = format_model_info(describe_model(imported))
    assert "yolov5" in text and "80" in text and "person" in text and "dynamic" in text
    assert "[1, 3, height, width]" in text
    assert 3 <= len(text.splitlines()) <= 8
    text = format_model_info(describe_model(yolov8_model))
    assert "yolov8" in text and "Normal, Fall" in text and "640x640" in text


@pytest.mark.parametrize(
    ("out_shape", "meta", "layout", "classes"),
    [
        ([1, 84, 8400], {}, "yolov8", 80),  # no metadata: channels < boxes
        ([1, 25200, 85], {}, "yolov5", 80),
        ([1, 84, "anchors"], {}, "yolov8", 80),
        (["batch", "boxes", 85], {}, "yolov5", 80),
        ([1, 6, 8400], {"task": "detect", "names": "{0: 'a', 1: 'b'}"}, "yolov8", 2),
        ([1, 300, 6], {"names": str({i: str(i) for i in range(80)})}, None, 80),  # NMS'd export
        ([1, 8400, 85], {"layout": "yolov8"}, "yolov8", None),  # metadata wins
    ],
)
def test_layout_rules(
    out_shape: list[int | str],
    meta: dict[str, str],
    layout: str | None,
    classes: int | None,
    tmp_path: Path,
) -> None:
    info = describe_model(_stub_model(tmp_path / "m.onnx", out_shape, meta))
    assert info["layout"] == layout
    if classes is not None:
        assert info["num_classes"] == classes


def test_dynamic_and_imgsz_from_input(tmp_path: Path) -> None:
    info = describe_model(
        _stub_model(tmp_path / "m.onnx", [1, 84, "n"], in_shape=("batch", 3, 480, 640))
    )
    assert info["dynamic"] is False and info["imgsz"] == [480, 640]
    info = describe_model(
        _stub_model(tmp_path / "m.onnx", [1, 84, "n"], {"imgsz": "320"}, in_shape=(1, 3, "h", "w"))
    )
    assert info["dynamic"] is True and info["imgsz"] == [320, 320]


def test_corrupt_file(tmp_path: Path) -> None:
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ModelInfoError) as err:
        describe_model(bad)
    assert str(bad) in str(err.value) and "\n" not in str(err.value)
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize(
    "content", [None, b"", b"not an onnx model at all"], ids=["missing", "empty", "text"]
)
def test_missing_or_empty_file(content: bytes | None, tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ModelInfoError, match=re.escape(str(path))):
        describe_model(path)


def test_directory_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(ModelInfoError, match=re.escape(str(tmp_path))):
        describe_model(tmp_path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{0: 'person', 1: 'bicycle'}", ["person", "bicycle"]),
        ('{0: "it\'s", 1: "b"}', ["it's", "b"]),
        ('["a", "b", "c"]', ["a", "b", "c"]),
        ('{"0": "a", "1": "b"}', ["a", "b"]),
        ("['x']", ["x"]),
        ("{0: 'a', 2: 'c'}", ["a", "class_1", "c"]),
        ("{}", None),
        ("{'a': 'b'}", None),
        ("not a literal {", None),
        ("42", None),
    ],
)
def test_read_class_names_formats(text: str, expected: list[str] | None) -> None:
    assert read_class_names({"names": text}) == expected


def test_read_class_names_from_model(yolov8_model: Path) -> None:
    assert read_class_names({}) is None
    model = onnx.load(str(yolov8_model), load_external_data=False)
    assert read_class_names(model) == ["Normal", "Fall"]

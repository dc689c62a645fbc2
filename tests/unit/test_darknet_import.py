"""The darknet importer on the real YOLOv3-tiny files, checked against OpenCV's darknet reader."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edged.tools.darknet import DarknetImportError, import_darknet
from edged.tools.model_info import read_class_names

# cv2.dnn zeroes class scores (objectness x class prob) at or below this; measured, not documented.
CV2_SCORE_THRESHOLD = 0.2


@pytest.fixture(scope="session")
def imported(
    tmp_path_factory: pytest.TempPathFactory, darknet_files: tuple[Path, Path, Path]
) -> Path:
    cfg, weights, names = darknet_files
    out = tmp_path_factory.mktemp("darknet") / "yolov3-tiny.onnx"
    return import_darknet(cfg, weights, out, names_file=names)


@pytest.fixture(scope="session")
def session(imported: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(imported), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="session")
def cv2_net(darknet_files: tuple[Path, Path, Path]) -> cv2.dnn.Net:
    cfg, weights, _ = darknet_files
    return cv2.dnn.readNetFromDarknet(str(cfg), str(weights))


def _blob(image: Path, height: int, width: int) -> np.ndarray:
    bgr = cv2.resize(cv2.imread(str(image)), (width, height))
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
    return np.ascontiguousarray(rgb.transpose(2, 0, 1)[None])


def _expected_rows(height: int, width: int) -> int:
    return 3 * ((height // 32) * (width // 32) + (height // 16) * (width // 16))


def _assert_matches_cv2(blob: np.ndarray, session: ort.InferenceSession, net: cv2.dnn.Net) -> None:
    height, width = blob.shape[2:]
    net.setInput(blob)
    refs = net.forward(net.getUnconnectedOutLayersNames())
    ours = session.run(None, {"images": blob})[0][0]
    assert ours.shape == (_expected_rows(height, width), 85)

    start, compared = 0, 0
    for ref, grid_stride in zip(refs, (32, 16), strict=True):
        gh, gw = height // grid_stride, width // grid_stride
        n = 3 * gh * gw
        # Ours is (anchor, y, x) like darknet/YOLOv5; cv2.dnn emits (y, x, anchor).
        mine = ours[start : start + n].reshape(3, gh, gw, 85).transpose(1, 2, 0, 3).reshape(n, 85)
        start += n
        assert ref.shape == mine.shape
        # cv2.dnn normalises boxes by the input size and multiplies classes by objectness.
        box_px = ref[:, :4] * np.array([width, height, width, height], np.float32)
        np.testing.assert_allclose(mine[:, :4], box_px, rtol=0, atol=0.5)
        np.testing.assert_allclose(mine[:, 4], ref[:, 4], rtol=0, atol=1e-3)
        scores = mine[:, 5:] * mine[:, 4:5]
        kept = ref[:, 5:] > 0.05
        np.testing.assert_allclose(scores[kept], ref[:, 5:][kept], rtol=0, atol=1e-3)
        assert scores[~kept].max(initial=0) <= CV2_SCORE_THRESHOLD + 1e-3
        compared += int(kept.sum())
    assert compared > 0, "no confident detection: the comparison would be vacuous"


@pytest.mark.parametrize("image", ["bus.jpg", "zidane.jpg"])
@pytest.mark.parametrize("size", [(416, 416), (320, 320), (320, 608)], ids=str)
def test_raw_output_matches_opencv_dnn(
    image: str,
    size: tuple[int, int],
    data_dir: Path,
    session: ort.InferenceSession,
    cv2_net: cv2.dnn.Net,
) -> None:
    _assert_matches_cv2(_blob(data_dir / "media" / image, *size), session, cv2_net)


def test_scale_x_y_matches_opencv_dnn(
    tmp_path: Path, data_dir: Path, darknet_files: tuple[Path, Path, Path]
) -> None:
    # YOLOv4-style cfgs stretch the sigmoid; yolov3-tiny has none, so add one to both sides.
    cfg, weights, _ = darknet_files
    edited = _edit_cfg(tmp_path, cfg, "[yolo]\n", "[yolo]\nscale_x_y = 1.1\n")
    out = import_darknet(edited, weights, tmp_path / "m.onnx")
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    net = cv2.dnn.readNetFromDarknet(str(edited), str(weights))
    _assert_matches_cv2(_blob(data_dir / "media" / "bus.jpg", 416, 416), session, net)


def test_finds_the_people_in_bus_jpg(data_dir: Path, session: ort.InferenceSession) -> None:
    out = session.run(None, {"images": _blob(data_dir / "media" / "bus.jpg", 416, 416)})[0][0]
    person = out[:, 4] * out[:, 5]
    assert (person > 0.9).any()
    best = out[person.argmax()]
    assert 0 < best[0] < 416 and 0 < best[1] < 416 and best[2] > 10 and best[3] > 30


@pytest.mark.parametrize(
    "size", [(416, 416), (320, 320), (256, 256), (640, 640), (384, 640)], ids=str
)
def test_dynamic_input_size(size: tuple[int, int], session: ort.InferenceSession) -> None:
    height, width = size
    x = np.random.default_rng(0).random((1, 3, height, width), dtype=np.float32)
    out = session.run(None, {"images": x})[0]
    assert out.shape == (1, _expected_rows(height, width), 85)
    assert _expected_rows(416, 416) == 3 * (13**2 + 26**2)
    # Cell centres stay inside the input, whatever its size.
    assert out[0, :, 0].max() < width + 32 and out[0, :, 1].max() < height + 32
    assert np.isfinite(out).all()


def test_graph_and_metadata(imported: Path, darknet_files: tuple[Path, Path, Path]) -> None:
    model = onnx.load(str(imported))
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["images"]
    assert [o.name for o in model.graph.output] == ["output0"]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value or d.dim_param for d in dims] == [1, 3, "height", "width"]
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["imgsz"] == "[416, 416]"
    assert meta["stride"] == "32"
    assert meta["layout"] == "yolov5"
    assert meta["source"] == "darknet:yolov3-tiny.cfg"
    assert meta["edged_importer"]
    assert meta["names"].startswith("{0: 'person', 1: 'bicycle', ")
    names = read_class_names(model)
    assert names is not None and len(names) == 80 and names[0] == "person"
    assert names == [n.strip() for n in darknet_files[2].read_text().splitlines() if n.strip()]


def test_progress_and_default_names(tmp_path: Path, darknet_files: tuple[Path, Path, Path]) -> None:
    cfg, weights, _ = darknet_files
    lone_cfg = tmp_path / "custom.cfg"  # no coco.names beside it
    lone_cfg.write_text(cfg.read_text())
    calls: list[tuple[int, int]] = []
    out = import_darknet(
        lone_cfg,
        weights,
        tmp_path / "m.onnx",
        progress=lambda done, total: calls.append((done, total)),
    )
    assert calls == [(i, 24) for i in range(1, 25)]
    names = read_class_names(onnx.load(str(out), load_external_data=False))
    assert names == [f"class_{i}" for i in range(80)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["custom.cfg", "m.onnx"]


def test_coco_names_beside_cfg_is_the_default(
    tmp_path: Path, darknet_files: tuple[Path, Path, Path]
) -> None:
    cfg, weights, _ = darknet_files
    out = import_darknet(cfg, weights, tmp_path / "sub" / "m.onnx")
    assert read_class_names(onnx.load(str(out)))[:2] == ["person", "bicycle"]


def test_names_file_with_wrong_count(
    tmp_path: Path, darknet_files: tuple[Path, Path, Path]
) -> None:
    cfg, weights, _ = darknet_files
    names = tmp_path / "two.names"
    names.write_text("a\nb\n")
    with pytest.raises(DarknetImportError, match=r"two\.names.*2 class names.*classes=80"):
        import_darknet(cfg, weights, tmp_path / "m.onnx", names_file=names)
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize(("cut", "state"), [(-1000, "truncated"), (8, "too long")])
def test_weights_size_mismatch(
    cut: int, state: str, tmp_path: Path, darknet_files: tuple[Path, Path, Path]
) -> None:
    cfg, weights, _ = darknet_files
    data = weights.read_bytes()
    bad = tmp_path / "bad.weights"
    bad.write_bytes(data[:cut] if cut < 0 else data + b"\0" * cut)
    with pytest.raises(DarknetImportError) as err:
        import_darknet(cfg, bad, tmp_path / "m.onnx")
    message = str(err.value)
    assert str(bad) in message and state in message and "\n" not in message
    assert not (tmp_path / "m.onnx").exists()


def _edit_cfg(tmp_path: Path, cfg: Path, old: str, new: str) -> Path:
    text = cfg.read_text()
    assert old in text
    edited = tmp_path / "edited.cfg"
    edited.write_text(text.replace(old, new))
    return edited


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        # A [shortcut] in place of the first maxpool: darknet layer 1.
        (
            "[maxpool]\nsize=2\nstride=2",
            "[shortcut]\nfrom=-1",
            r"section 1 \[shortcut\] at line \d+: unsupported section type",
        ),
        ("activation=leaky", "activation=mish", r"section 0 \[convolutional\].*'mish'"),
        ("layers = -4", "layers = 30", r"section 17 \[route\].*earlier layers"),
        ("mask = 3,4,5", "mask = 3,4,9", r"section 16 \[yolo\].*mask"),
        ("width=416", "width=wide", r"\[net\].*'width' is not an integer"),
    ],
)
def test_unsupported_cfg(
    old: str, new: str, expected: str, tmp_path: Path, darknet_files: tuple[Path, Path, Path]
) -> None:
    cfg, weights, _ = darknet_files
    edited = _edit_cfg(tmp_path, cfg, old, new)
    with pytest.raises(DarknetImportError, match=expected) as err:
        import_darknet(edited, weights, tmp_path / "m.onnx")
    assert str(edited) in str(err.value) and "\n" not in str(err.value)
    assert isinstance(err.value, ValueError)


def test_module_imports_no_runtime() -> None:
    code = (
        "import sys, edged.tools.darknet\n"
        "bad = {'torch', 'onnxruntime'} & set(sys.modules)\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)

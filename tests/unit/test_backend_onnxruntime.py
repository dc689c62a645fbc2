"""OnnxRuntimeBackend: clear errors for bad models/providers, input sizes; Detector wiring."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from edged.backends import onnxruntime as ort_backend
from edged.backends.base import ModelUnavailable
from edged.backends.onnxruntime import PROVIDERS, OnnxRuntimeBackend
from edged.config import DetectConfig, ModelConfig
from edged.vision.detector import Detector


def loaded(path: Path, **kwargs: object) -> OnnxRuntimeBackend:
    backend = OnnxRuntimeBackend(ModelConfig(path=path, intra_op_threads=1, **kwargs))
    backend.load()
    return backend


def tiny_model(
    path: Path, shape: list[int | str], inputs: int = 1, metadata: dict[str, str] | None = None
) -> Path:
    """An Identity graph with the given input shape: enough to exercise input handling."""
    names = [f"images{i}" if i else "images" for i in range(inputs)]
    graph = helper.make_graph(
        [helper.make_node("Identity", [names[0]], ["output0"])],
        "tiny",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in names],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, path)
    return path


# --- errors ----------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.onnx"
    with pytest.raises(ModelUnavailable, match="does not exist") as info:
        loaded(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_garbage_file(tmp_path: Path) -> None:
    path = tmp_path / "garbage.onnx"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ModelUnavailable, match="not a loadable ONNX model") as info:
        loaded(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_truncated_model(tmp_path: Path, yolov8_model: Path) -> None:
    path = tmp_path / "truncated.onnx"
    path.write_bytes(yolov8_model.read_bytes()[:100_000])
    with pytest.raises(ModelUnavailable, match=str(path)):
        loaded(path)


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match="not a file"):
        loaded(tmp_path)


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tiny_model(tmp_path / "m.onnx", [1, 3, 64, 64])
    path.chmod(0)
    if os.geteuid() == 0:  # root reads any file; make the permission check see what a user would
        monkeypatch.setattr(ort_backend.os, "access", lambda *_: False)
    with pytest.raises(ModelUnavailable, match="not readable"):
        loaded(path)


def test_unavailable_provider_is_an_error_not_a_fallback(yolov8_model: Path) -> None:
    absent = [name for name, full in PROVIDERS.items() if full not in ort.get_available_providers()]
    if not absent:
        pytest.skip("every execution provider is available here")
    with pytest.raises(ModelUnavailable) as info:
        loaded(yolov8_model, providers=[absent[0], "cpu"])
    message = str(info.value)
    assert repr(absent[0]) in message and PROVIDERS[absent[0]] in message
    assert "available: " in message and "cpu" in message and str(yolov8_model) in message


@pytest.mark.filterwarnings("ignore:Specified provider")
def test_provider_dropped_by_ort_is_an_error(
    yolov8_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ORT itself falls back to CPU when an EP fails to initialise; we refuse instead."""
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA really is available here")
    real = ort.get_available_providers()
    monkeypatch.setattr(
        ort_backend.ort, "get_available_providers", lambda: ["CUDAExecutionProvider", *real]
    )
    with pytest.raises(ModelUnavailable, match="'cuda' failed to initialise"):
        loaded(yolov8_model, providers=["cuda"])


def test_fixed_model_with_other_input_size(yolov8_model: Path) -> None:
    with pytest.raises(ModelUnavailable, match=r"fixed at 640x640 but model\.input_size is 416"):
        loaded(yolov8_model, input_size=416)


def test_non_square_and_multi_input_models(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match="square"):
        loaded(tiny_model(tmp_path / "wide.onnx", [1, 3, 384, 640]))
    with pytest.raises(ModelUnavailable, match="one image input"):
        loaded(tiny_model(tmp_path / "two.onnx", [1, 3, 64, 64], inputs=2))


# --- input size --------------------------------------------------------------------------------


def test_fixed_model_size(yolov8_model: Path) -> None:
    backend = loaded(yolov8_model)
    spec = backend.input_spec
    assert (spec.name, spec.size, spec.dynamic) == ("images", 640, False)
    backend.set_input_size(640)  # the size it has: a no-op
    with pytest.raises(ValueError, match="fixed at 640x640"):
        backend.set_input_size(320)


def test_dynamic_model_size_from_metadata_config_and_switch(default_model: Path) -> None:
    backend = loaded(default_model)
    assert backend.input_spec.dynamic and backend.input_spec.size == 416  # metadata imgsz
    assert loaded(default_model, input_size=320).input_spec.size == 320
    backend.set_input_size(320)
    out = backend.infer(np.zeros((1, 3, 320, 320), np.float32))
    # YOLOv3-tiny: 3 anchors on a 10x10 and a 20x20 grid at 320
    assert out.shape == (1, 3 * (10 * 10 + 20 * 20), 85)
    with pytest.raises(ValueError, match="multiple of 32"):
        backend.set_input_size(300)


def test_dynamic_model_without_metadata_defaults_to_640(tmp_path: Path) -> None:
    backend = loaded(tiny_model(tmp_path / "dyn.onnx", [1, 3, "h", "w"]))
    assert backend.input_spec.size == 640 and backend.input_spec.dynamic
    meta = tiny_model(tmp_path / "meta.onnx", [1, 3, "h", "w"], metadata={"imgsz": "[480, 480]"})
    assert loaded(meta).input_spec.size == 480


def test_describe_warmup_and_metadata(yolov8_model: Path) -> None:
    backend = loaded(yolov8_model)
    backend.warmup(2)
    info = backend.describe()
    assert info["providers"] == ["CPUExecutionProvider"]
    assert info["input_size"] == 640 and info["intra_op_threads"] == 1
    assert info["onnxruntime"] == ort.__version__
    assert backend.metadata["names"] == "{0: 'Normal', 1: 'Fall'}"


def test_not_loaded_backend_says_so(yolov8_model: Path) -> None:
    backend = OnnxRuntimeBackend(ModelConfig(path=yolov8_model))
    with pytest.raises(RuntimeError, match="load"):
        backend.infer(np.zeros((1, 3, 640, 640), np.float32))


# --- the detector on top of the backend ----------------------------------------------------


def test_detector_names_file_and_mismatch(tmp_path: Path, yolov8_model: Path) -> None:
    names = tmp_path / "names.txt"
    names.write_text("upright\nfallen\n")
    detector = Detector(ModelConfig(path=yolov8_model, names_file=names), DetectConfig())
    assert detector.names == ["upright", "fallen"]
    names.write_text("a\nb\nc\n")
    with pytest.raises(ModelUnavailable, match="3 class names but"):
        Detector(ModelConfig(path=yolov8_model, names_file=names), DetectConfig())
    with pytest.raises(ModelUnavailable, match="cannot read"):
        Detector(ModelConfig(path=yolov8_model, names_file=tmp_path / "no"), DetectConfig())


def test_detector_switches_size_and_conf(default_model: Path) -> None:
    detector = Detector(ModelConfig(path=default_model, intra_op_threads=1), DetectConfig())
    frame = np.full((480, 640, 3), 90, np.uint8)
    assert detector.input_size == 416
    detector.set_input_size(320)
    assert detector.input_size == 320 and detector.backend.input_spec.size == 320
    assert len(detector.detect(frame)) == 0  # a flat gray frame holds nothing
    detector.set_conf(0.9)
    assert detector.conf == 0.9
    with pytest.raises(ValueError):
        detector.set_conf(0)


# --- optimized-model cache and I/O binding ---------------------------------------------------


def test_io_binding_matches_plain_run_and_follows_size_switches(default_model: Path) -> None:
    plain = loaded(default_model, input_size=416)
    bound = loaded(default_model, input_size=416, io_binding="on")
    assert bound.io_binding and not plain.io_binding  # auto is off on CPU: nothing to save
    rng = np.random.default_rng(1)
    for size in (416, 320, 416):
        plain.set_input_size(size)
        bound.set_input_size(size)
        for _ in range(2):
            x = rng.random((1, 3, size, size), dtype=np.float32)
            want = plain.infer(x)
            got = bound.infer(x)
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, atol=1e-5)
    # The same input buffer refilled in place (what Letterboxer does) stays bound correctly.
    x = np.zeros((1, 3, 416, 416), np.float32)
    first = bound.infer(x).copy()
    x += 0.5
    np.testing.assert_allclose(bound.infer(x), plain.infer(x), atol=1e-5)
    assert not np.allclose(first, plain.infer(x))


def test_optimized_cache_is_written_then_used(tmp_path: Path, default_model: Path) -> None:
    cache = tmp_path / "cache"
    first = loaded(default_model, input_size=320, ort_optimized_cache=True, cache_dir=cache)
    assert first.describe()["optimized_cache"].startswith("written ")
    files = list((cache / "ort").glob("yolov3-tiny-*.onnx"))
    assert len(files) == 1 and not list((cache / "ort").glob(".*tmp"))
    second = loaded(default_model, input_size=320, ort_optimized_cache=True, cache_dir=cache)
    assert second.describe()["optimized_cache"] == f"hit {files[0]}"
    assert second.metadata["layout"] == "yolov5"  # metadata survives the optimized graph
    x = np.random.default_rng(2).random((1, 3, 320, 320), dtype=np.float32)
    np.testing.assert_allclose(second.infer(x), first.infer(x), atol=1e-4)


def test_optimized_cache_key_changes_with_model_and_providers(
    tmp_path: Path, default_model: Path, yolov8_model: Path
) -> None:
    a = ort_backend.optimized_cache_path(ModelConfig(path=default_model, cache_dir=tmp_path))
    b = ort_backend.optimized_cache_path(ModelConfig(path=yolov8_model, cache_dir=tmp_path))
    c = ort_backend.optimized_cache_path(
        ModelConfig(path=default_model, cache_dir=tmp_path, providers=["cuda", "cpu"]))
    assert len({a, b, c}) == 3
    assert a == ort_backend.optimized_cache_path(ModelConfig(path=default_model,
                                                             cache_dir=tmp_path))


def test_torn_cache_file_is_rebuilt(tmp_path: Path, default_model: Path) -> None:
    config = ModelConfig(path=default_model, ort_optimized_cache=True, cache_dir=tmp_path)
    path = ort_backend.optimized_cache_path(config)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"half an onnx file")
    backend = loaded(default_model, ort_optimized_cache=True, cache_dir=tmp_path)
    assert backend.describe()["optimized_cache"].startswith("written ")
    assert path.stat().st_size > 1_000_000


def test_unwritable_cache_dir_still_loads(tmp_path: Path, default_model: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    backend = loaded(default_model, ort_optimized_cache=True, cache_dir=blocker / "cache")
    assert backend.describe()["optimized_cache"] == "off"
    assert backend.infer(np.zeros((1, 3, 416, 416), np.float32)).shape == (1, 2535, 85)

"""Backend selection: `auto`'s rules and reasons; an explicit backend that cannot run is an
error naming why, never a fallback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edged.backends.base import ModelUnavailable
from edged.backends.select import (
    create_backend,
    ncnn_twin,
    ncnn_twin_sizes,
    select_backend,
    tensorrt_problem,
)
from edged.config import ModelConfig
from tests import artifacts


@pytest.fixture(scope="session")
def ncnn_model(tmp_path_factory: pytest.TempPathFactory, default_model: Path) -> Path:
    return artifacts.ncnn_model(tmp_path_factory, default_model)


def test_explicit_onnxruntime(default_model: Path) -> None:
    selection = select_backend(ModelConfig(path=default_model, backend="onnxruntime"))
    assert selection.backend == "onnxruntime"
    assert "onnxruntime" in selection.reason


def test_auto_on_this_x86_box_is_onnxruntime_and_says_why(default_model: Path) -> None:
    selection = select_backend(ModelConfig(path=default_model))
    assert selection.backend == "onnxruntime"
    assert selection.reason.startswith("auto: ")
    assert "x86_64" in selection.reason or "aarch64" in selection.reason


@pytest.mark.slow
def test_auto_picks_ncnn_on_arm_only_with_a_twin(ncnn_model: Path, default_model: Path) -> None:
    with_twin = select_backend(ModelConfig(path=ncnn_model, input_size=416), arch="aarch64")
    assert with_twin.backend == "ncnn"
    assert "NCNN twin at 416" in with_twin.reason
    # The same model on x86 stays on ONNX Runtime (NCNN's x86 kernels are the slower ones).
    assert select_backend(ModelConfig(path=ncnn_model), arch="x86_64").backend == "onnxruntime"
    without = select_backend(ModelConfig(path=default_model, input_size=640), arch="aarch64")
    assert without.backend == "onnxruntime"
    assert "no NCNN twin" in without.reason


@pytest.mark.slow
def test_twin_lookup_by_name_and_size(ncnn_model: Path) -> None:
    assert ncnn_twin_sizes(ncnn_model) == [320, 416]
    param = ncnn_twin(ncnn_model, 416)
    assert param is not None and param.name == f"{ncnn_model.stem}.416.ncnn.param"
    assert ncnn_twin(ncnn_model, 640) is None
    meta = json.loads(param.with_suffix(".json").read_text())
    assert meta["size"] == 416 and len(meta["onnx_sha256"]) == 64


def test_explicit_ncnn_without_twin_is_unavailable(tmp_path: Path, default_model: Path) -> None:
    model = tmp_path / "m.onnx"
    model.symlink_to(default_model)
    with pytest.raises(ModelUnavailable, match=r"no NCNN twin for input size 416.*convert-ncnn"):
        select_backend(ModelConfig(path=model, backend="ncnn", input_size=416))


@pytest.mark.skipif(tensorrt_problem() is None, reason="TensorRT runs on this machine")
def test_explicit_tensorrt_unavailable_names_the_reason(default_model: Path) -> None:
    with pytest.raises(ModelUnavailable) as info:
        create_backend(ModelConfig(path=default_model, backend="tensorrt"))
    message = str(info.value)
    assert "model.backend is 'tensorrt' but" in message
    assert str(tensorrt_problem()) in message
    assert "auto or onnxruntime" in message


@pytest.mark.slow
def test_stale_twin_of_another_model_is_refused(
    tmp_path: Path, ncnn_model: Path, yolov8_model: Path
) -> None:
    # A twin converted from yolov3-tiny, left beside a different ONNX file of the same name.
    other = tmp_path / ncnn_model.name
    other.symlink_to(yolov8_model)
    for suffix in (".param", ".bin", ".json"):
        src = ncnn_model.with_name(f"{ncnn_model.stem}.416.ncnn{suffix}")
        shutil.copy(src, tmp_path / src.name)
    backend = create_backend(ModelConfig(path=other, backend="ncnn", input_size=416))
    with pytest.raises(ModelUnavailable, match="converted from another version"):
        backend.load()

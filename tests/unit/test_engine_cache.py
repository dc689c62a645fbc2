"""TensorRT engine cache without a GPU: the key, cache hits, rebuild on every key change, and
a scan of the TensorRT code for APIs that TensorRT 10 removed or deprecated."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import edged.backends.tensorrt as trt_backend
import edged.tools.engine as engine
from edged.tools.engine import EngineKey, engine_path, ensure_engine, file_sha256, profile_shapes


class RecordingBuilder:
    """Stands in for TensorRT's builder (which needs a GPU): records each build request and
    returns bytes that name the key, so a test can tell which build produced a file."""

    def __init__(self) -> None:
        self.calls: list[EngineKey] = []

    def __call__(self, onnx_path: Path, key: EngineKey, *, timing_cache: Path,
                 **kwargs: Any) -> bytes:
        self.calls.append(key)
        timing_cache.parent.mkdir(parents=True, exist_ok=True)
        timing_cache.write_bytes(b"timing")
        return f"engine for {key.digest()}".encode()


@pytest.fixture()
def key(default_model: Path) -> EngineKey:
    return EngineKey(file_sha256(default_model), "10.3.0", "Orin sm_87", "fp16",
                     profile_shapes(416, dynamic=True))


def test_profile_covers_the_governor_steps() -> None:
    assert profile_shapes(416, True) == ((1, 3, 320, 320), (1, 3, 416, 416), (1, 3, 416, 416))
    assert profile_shapes(640, False) == ((1, 3, 640, 640),) * 3
    assert profile_shapes(256, True)[0] == (1, 3, 256, 256)


def test_every_key_field_changes_the_digest(key: EngineKey) -> None:
    changed = [
        replace(key, onnx_sha256="0" * 64), replace(key, tensorrt="10.4.0"),
        replace(key, gpu="NVIDIA A100 sm_80"), replace(key, precision="int8"),
        replace(key, shapes=profile_shapes(640, True)),
    ]
    digests = {key.digest(), *(k.digest() for k in changed)}
    assert len(digests) == 6
    assert key.digest() == replace(key).digest()  # stable for equal keys


def test_build_once_then_hit(tmp_path: Path, default_model: Path, key: EngineKey) -> None:
    builder = RecordingBuilder()
    path, built = ensure_engine(default_model, key, tmp_path, builder, workspace_mb=256)
    assert built and builder.calls == [key]
    assert path == engine_path(tmp_path, default_model, key)
    assert path.name.startswith("yolov3-tiny-416-fp16-")
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["gpu"] == "Orin sm_87" and sidecar["onnx_sha256"] == key.onnx_sha256
    again, built = ensure_engine(default_model, key, tmp_path, builder)
    assert (again, built) == (path, False) and len(builder.calls) == 1
    assert (tmp_path / "engines" / "timing.cache").read_bytes() == b"timing"


@pytest.mark.parametrize("field, value", [
    ("onnx_sha256", "f" * 64), ("tensorrt", "10.5.0"), ("gpu", "Jetson Orin Nano sm_87"),
    ("precision", "fp32"), ("shapes", profile_shapes(320, False)),
])
def test_rebuild_when_the_key_changes(
    tmp_path: Path, default_model: Path, key: EngineKey, field: str, value: object
) -> None:
    builder = RecordingBuilder()
    old, _ = ensure_engine(default_model, key, tmp_path, builder)
    new_key = replace(key, **{field: value})
    new, built = ensure_engine(default_model, new_key, tmp_path, builder)
    assert built and new != old and builder.calls == [key, new_key]
    assert new.read_bytes() == f"engine for {new_key.digest()}".encode()


def test_changed_onnx_file_gives_a_new_key(tmp_path: Path, default_model: Path) -> None:
    copy = tmp_path / "m.onnx"
    copy.write_bytes(default_model.read_bytes())
    before = file_sha256(copy)
    with copy.open("ab") as f:
        f.write(b"\0")  # a re-export: different bytes, same name
    assert file_sha256(copy) != before


def test_sidecar_disagreeing_with_the_file_forces_a_rebuild(
    tmp_path: Path, default_model: Path, key: EngineKey
) -> None:
    builder = RecordingBuilder()
    path, _ = ensure_engine(default_model, key, tmp_path, builder)
    doc = json.loads(path.with_suffix(".json").read_text())
    path.with_suffix(".json").write_text(json.dumps({**doc, "gpu": "something else"}))
    _, built = ensure_engine(default_model, key, tmp_path, builder)
    assert built and len(builder.calls) == 2
    path.with_suffix(".json").unlink()
    assert ensure_engine(default_model, key, tmp_path, builder)[1]


def test_failed_build_leaves_no_engine(tmp_path: Path, default_model: Path,
                                       key: EngineKey) -> None:
    def broken(*args: Any, **kwargs: Any) -> bytes:
        raise engine.EngineError("out of workspace")

    with pytest.raises(engine.EngineError):
        ensure_engine(default_model, key, tmp_path, broken)
    assert not engine_path(tmp_path, default_model, key).exists()


# Each pattern is an API TensorRT 10 removed (or deprecated with a replacement we must use).
REMOVED_APIS = {
    r"\bexecute_v2\b": "execute_async_v3",
    r"\bexecute_async_v2\b": "execute_async_v3",
    r"\bexecute\(": "execute_async_v3",
    r"\bget_binding_\w+": "get_tensor_name / get_tensor_shape / get_tensor_mode",
    r"\bbinding_is_input\b": "get_tensor_mode",
    r"\bnum_bindings\b": "num_io_tensors",
    r"\bset_binding_shape\b": "set_input_shape",
    r"\bbindings\s*=": "set_tensor_address",
    r"\.build_engine\(": "build_serialized_network",
    r"\bmax_workspace_size\b": "set_memory_pool_limit",
    r"\bmax_batch_size\b": "explicit batch",
    r"EXPLICIT_BATCH": "create_network(0)",
    r"pycuda\.autoinit": "a context made in the worker",
    r"platform_has_fast_fp16|platform_has_fast_int8": "compute capability (10.5 deprecation)",
}


@pytest.mark.parametrize("module", [trt_backend, engine], ids=["backends/tensorrt.py",
                                                                "tools/engine.py"])
def test_no_removed_tensorrt_apis(module: Any) -> None:
    source = Path(module.__file__).read_text()
    found = [f"{pattern} (use {fix})" for pattern, fix in REMOVED_APIS.items()
             if re.search(pattern, source)]
    assert not found, f"{module.__name__} uses removed TensorRT APIs: {found}"
    if module is trt_backend:
        for needed in ("execute_async_v3", "set_tensor_address", "set_input_shape",
                       "num_io_tensors", "get_tensor_mode", "pagelocked_empty"):
            assert needed in source, needed
    else:
        assert "build_serialized_network" in source and "set_memory_pool_limit" in source


def test_fast_fp16_from_compute_capability() -> None:
    assert engine.fast_fp16("Orin sm_87") and engine.fast_fp16("Tesla T4 sm_75")
    assert engine.fast_fp16("Jetson Nano sm_53")
    assert not engine.fast_fp16("GeForce GTX 1080 sm_61")
    assert not engine.fast_fp16("unknown")


def test_importing_the_backend_touches_no_cuda() -> None:
    import subprocess
    import sys

    code = ("import sys, edged.backends.tensorrt, edged.tools.engine, edged.backends.select; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('tensorrt', 'pycuda', 'cuda')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"

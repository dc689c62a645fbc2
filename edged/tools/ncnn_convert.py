"""`edged model convert-ncnn`: ONNX -> NCNN twins (`<stem>.<size>.ncnn.param/.bin/.json`).

The converter is the standalone `pnnx` binary shipped inside the `pnnx` wheel. The wheel is
installed with `--no-deps` because its Python half imports torch (several GB) — so we never
import the package, we only locate its folder and run the binary. pnnx folds the YOLO grid
into constants, so every input size is a separate conversion.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import structlog

from edged.tools.model_info import describe_model

log = structlog.get_logger(__name__)

_STRIDE = 32


class ConvertError(Exception):
    """The conversion cannot run or failed; str() is one line with the fix."""


def find_pnnx() -> Path:
    """The pnnx binary: $EDGED_PNNX, the pnnx wheel's own copy, or `pnnx` on PATH."""
    if env := os.environ.get("EDGED_PNNX"):
        return Path(env)
    spec = importlib.util.find_spec("pnnx")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        binary = Path(folder) / "pnnx"
        if binary.is_file() and os.access(binary, os.X_OK):
            return binary
    if found := shutil.which("pnnx"):
        return Path(found)
    raise ConvertError(
        "the pnnx converter is not installed; run `pip install --no-deps pnnx` "
        "(without --no-deps pip pulls torch) or `make setup`, or set $EDGED_PNNX"
    )


def twin_paths(onnx_path: Path, size: int, out_dir: Path | None = None) -> tuple[Path, Path]:
    folder = out_dir or onnx_path.parent
    base = f"{onnx_path.stem}.{size}.ncnn"
    return folder / f"{base}.param", folder / f"{base}.bin"


def convert_ncnn(
    onnx_path: Path, sizes: list[int], *, out_dir: Path | None = None, fp16: bool = True,
    timeout_s: float = 600.0,
) -> list[Path]:
    """Convert `onnx_path` once per input size; returns the `.param` files written.

    `fp16` stores weights as float16 (half the file, NCNN's default; matches FP32 ONNX Runtime
    within ~0.005 in score on YOLOv3-tiny). Twins land beside the ONNX file unless `out_dir`
    is given: the NCNN backend finds them there by name.
    """
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise ConvertError(f"{onnx_path}: model file not found")
    bad = [s for s in sizes if s <= 0 or s % _STRIDE]
    if bad or not sizes:
        raise ConvertError(f"sizes must be positive multiples of {_STRIDE}, got {sizes}")
    info = describe_model(onnx_path)
    if len(info["inputs"]) != 1 or len(info["outputs"]) != 1:
        raise ConvertError(f"{onnx_path}: expected one input and one output")
    fixed = info["imgsz"] if not info["dynamic"] else None
    if fixed and any(s != max(fixed) for s in sizes):
        raise ConvertError(f"{onnx_path}: input is fixed at {fixed}; convert at that size only")
    binary = find_pnnx()
    written = []
    for size in sizes:
        written.append(_convert_one(binary, onnx_path, size, info, out_dir, fp16, timeout_s))
    return written


def _convert_one(
    binary: Path, onnx_path: Path, size: int, info: dict[str, object], out_dir: Path | None,
    fp16: bool, timeout_s: float,
) -> Path:
    param, weights = twin_paths(onnx_path, size, out_dir)
    param.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    # pnnx writes five intermediate files next to its input by default; keep them in a
    # scratch folder and move only the NCNN pair into place, so a failed run leaves nothing.
    with tempfile.TemporaryDirectory(prefix="edged-pnnx-") as tmp:
        work = Path(tmp)
        model = work / "model.onnx"
        os.symlink(onnx_path.resolve(), model)
        command = [
            str(binary), str(model), f"inputshape=[1,3,{size},{size}]",
            f"pnnxparam={work / 'm.pnnx.param'}", f"pnnxbin={work / 'm.pnnx.bin'}",
            f"pnnxpy={work / 'm_pnnx.py'}", f"pnnxonnx={work / 'm.pnnx.onnx'}",
            f"ncnnparam={work / 'm.ncnn.param'}", f"ncnnbin={work / 'm.ncnn.bin'}",
            f"ncnnpy={work / 'm_ncnn.py'}", f"fp16={int(fp16)}",
        ]
        try:
            proc = subprocess.run(command, cwd=work, capture_output=True, text=True,
                                  timeout=timeout_s, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ConvertError(f"pnnx ({binary}) could not run: {exc}") from None
        produced = work / "m.ncnn.param"
        if proc.returncode != 0 or not produced.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise ConvertError(
                f"pnnx failed on {onnx_path} at {size} (exit {proc.returncode}): "
                f"{' | '.join(tail)[:300]}"
            )
        shutil.move(work / "m.ncnn.bin", weights)
        shutil.move(produced, param)
    meta = {
        "onnx": onnx_path.name,
        "onnx_sha256": info["sha256"],
        "size": size,
        "input": "in0",  # pnnx names the blobs in0.. / out0..
        "output": "out0",
        "fp16": fp16,
        "converter": str(binary),
    }
    param.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
    log.info("ncnn.converted", onnx=str(onnx_path), size=size, param=str(param),
             bytes=weights.stat().st_size, ms=round((time.perf_counter() - started) * 1000))
    return param

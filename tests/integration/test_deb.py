"""`make deb`: package contents, lintian, a real install / reinstall / remove / purge, the wheel.

The .deb is built once for the module (`make deb`, about 1-2 min on 2 cores), and lintian runs
on it in the background while the install tests run. The install tests change this machine
(dpkg -i, the user `edged`): they need root, which CI has, and a machine where edged is not
installed already. A finalizer purges the package whatever happens.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("EDGED_DATA", ROOT / "data"))
PREFIX = Path("/opt/edged")
CONFIG = Path("/etc/edged/edged.yaml")
STATE = Path("/var/lib/edged")
MODEL = STATE / "models" / "yolov3-tiny.onnx"
WANTS = Path("/etc/systemd/system/multi-user.target.wants/edged.service")
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

pytestmark = [
    pytest.mark.slow,
    # The first test pays for the build, the last one waits for lintian.
    pytest.mark.timeout(600),
    pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="not Debian: no dpkg-deb"),
]


def _version() -> str:
    text = (ROOT / "pyproject.toml").read_text()
    return re.search(r'^version\s*=\s*"([^"]+)"', text, re.M).group(1)


def _clean_env(**extra: str) -> dict[str, str]:
    """What a shell on the board has: no venv, no PYTHONPATH, no EDGED_* from the test run."""
    env = {"PATH": SYSTEM_PATH, "LANG": "C.UTF-8", "HOME": "/root", "TERM": "dumb"}
    env.update(extra)
    return env


def run(*cmd: str | Path, check: bool = True, timeout: float = 300, **kw: object
        ) -> subprocess.CompletedProcess[str]:
    kw.setdefault("env", _clean_env(DEBIAN_FRONTEND="noninteractive"))
    kw.setdefault("cwd", "/")
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                            timeout=timeout, **kw)  # type: ignore[call-overload]
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(map(str, cmd))} exited {result.returncode}\n"
                    f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}",
                    pytrace=False)
    return result


def apt_install(*packages: str) -> None:
    """apt-get install, with `apt-get update` only when the plain install fails."""
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
    if run(*cmd, check=False, timeout=600).returncode != 0:
        run("apt-get", "update", "-q", timeout=600)
        run(*cmd, timeout=600)


def is_root() -> bool:
    return os.geteuid() == 0


# --- The build ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def deb() -> Path:
    result = subprocess.run(["make", "deb"], cwd=ROOT, capture_output=True, text=True,
                            timeout=900)
    if result.returncode != 0:
        pytest.fail(f"make deb failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}",
                    pytrace=False)
    arch = run("dpkg", "--print-architecture").stdout.strip()
    version = re.sub(r"^([0-9.]+)\.?(a|b|rc|dev)", r"\1~\2", _version())
    path = ROOT / "dist" / f"edged_{version}_{arch}.deb"
    assert path.is_file(), f"make deb did not produce {path}"
    print(f"\n{path.name}: {path.stat().st_size / 2**20:.0f} MiB")
    return path


@pytest.fixture(scope="module")
def wheel(deb: Path) -> Path:
    wheels = sorted((ROOT / "dist").glob(f"edged-{_version()}-*.whl"))
    assert len(wheels) == 1, f"expected one wheel of edged {_version()} in dist/: {wheels}"
    return wheels[0]


class Lintian:
    """lintian on the .deb in the background: it takes 1-2 minutes and overlaps the installs."""

    def __init__(self, deb: Path, log: Path) -> None:
        self.log = log
        self._out = log.open("w")
        self.proc = subprocess.Popen(
            ["lintian", "--tag-display-limit", "0", str(deb)],
            stdout=self._out, stderr=subprocess.STDOUT, cwd="/", env=_clean_env())

    def result(self, timeout: float) -> tuple[int, str]:
        rc = self.proc.wait(timeout)
        self._out.close()
        return rc, self.log.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._out.close()


@pytest.fixture(scope="module", autouse=True)
def lintian(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lintian | None]:
    # Installed before any install test: apt and dpkg -i would fight over the dpkg lock.
    if shutil.which("lintian") is None and is_root():
        apt_install("lintian")
    if shutil.which("lintian") is None:
        yield None
        return
    job = Lintian(deb, tmp_path_factory.mktemp("lintian") / "lintian.txt")
    yield job
    job.stop()


# --- What is in the package ---------------------------------------------------------------------

TEXTS = ["etc/edged/edged.yaml", "lib/systemd/system/edged.service", "opt/edged/pyvenv.cfg",
         "opt/edged/bin/edged"]


@pytest.fixture(scope="module")
def contents(deb: Path) -> tuple[dict[str, tarfile.TarInfo], dict[str, str]]:
    """Every member of the data archive, and the text of the few files in TEXTS (one pass)."""
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    members: dict[str, tarfile.TarInfo] = {}
    texts: dict[str, str] = {}
    with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
        for member in tar:
            name = member.name.removeprefix("./").rstrip("/")
            members[name] = member
            if name in TEXTS:
                texts[name] = tar.extractfile(member).read().decode()  # type: ignore[union-attr]
    assert proc.wait() == 0
    return members, texts


def test_package_contents(contents: tuple[dict[str, tarfile.TarInfo], dict[str, str]]) -> None:
    members, _ = contents
    site = "opt/edged/lib/python3.11/site-packages"
    for path in [
        "opt/edged/bin/edged", "opt/edged/pyvenv.cfg", f"{site}/edged/cli.py",
        "lib/systemd/system/edged.service", "etc/edged/edged.yaml",
        "var/lib/edged/models/yolov3-tiny.onnx",
        "usr/share/doc/edged/copyright", "usr/share/doc/edged/changelog.gz",
        "usr/share/man/man1/edged.1.gz", "usr/share/lintian/overrides/edged",
    ]:
        assert path in members, f"{path} is not in the package"
    if (ROOT / "systemd" / "edged.sysusers.conf").exists():
        assert "usr/lib/sysusers.d/edged.conf" in members

    # /usr/bin/edged runs the venv's script; the venv runs Debian's interpreter.
    assert members["usr/bin/edged"].issym()
    assert members["usr/bin/edged"].linkname == "/opt/edged/bin/edged"
    assert members["opt/edged/bin/python3.11"].linkname == "/usr/bin/python3.11"
    # Every file root-owned (--root-owner-group); no bytecode (postinst compiles it).
    assert {(m.uname, m.gname) for m in members.values()} == {("root", "root")}
    assert not [n for n in members if n.endswith(".pyc") or "__pycache__" in n]
    # Every module of the source tree made it into the venv.
    source = {p.relative_to(ROOT).as_posix() for p in (ROOT / "edged").rglob("*.py")}
    missing = {p for p in source if f"{site}/{p}" not in members}
    assert not missing, f"modules missing from the package: {sorted(missing)}"
    # The model is the one `make setup` built, byte for byte.
    assert members["var/lib/edged/models/yolov3-tiny.onnx"].size == \
        (DATA / "models" / "yolov3-tiny.onnx").stat().st_size


def test_package_files_are_the_repository_files(
    contents: tuple[dict[str, tarfile.TarInfo], dict[str, str]]
) -> None:
    _, texts = contents
    assert texts["etc/edged/edged.yaml"] == (ROOT / "etc/edged/edged.yaml").read_text()
    assert texts["lib/systemd/system/edged.service"] == (ROOT / "systemd/edged.service").read_text()
    # The venv names /opt/edged and Debian's interpreter, never the build tree.
    cfg = texts["opt/edged/pyvenv.cfg"]
    assert "home = /usr/bin" in cfg and str(ROOT) not in cfg, cfg
    assert texts["opt/edged/bin/edged"].startswith("#!/opt/edged/bin/python")
    # The shipped config names the shipped model.
    assert yaml.safe_load(texts["etc/edged/edged.yaml"])["model"]["path"] == str(MODEL)


def test_control_fields_conffiles_and_scripts(deb: Path) -> None:
    info = run("dpkg-deb", "--info", deb).stdout
    fields = dict(re.findall(r"^ ([A-Z][\w-]+): (.*)$", info, re.M))
    arch = run("dpkg", "--print-architecture").stdout.strip()
    assert fields["Package"] == "edged"
    assert fields["Version"] == re.sub(r"^([0-9.]+)\.?(a|b|rc|dev)", r"\1~\2", _version())
    assert fields["Architecture"] == arch
    for name in ["Maintainer", "Installed-Size", "Section", "Priority", "Description"]:
        assert fields.get(name), f"control has no {name}"
    depends = [d.strip().split()[0] for d in fields["Depends"].split(",")]
    assert "python3.11" in depends and "libc6" in depends, fields["Depends"]
    assert int(fields["Installed-Size"]) > 100_000  # KiB: the venv is a few hundred MiB

    for member in ["control", "conffiles", "md5sums", "postinst", "prerm", "postrm"]:
        assert re.search(rf"^\s+\d+ bytes,\s+\d+ lines\s+\*?\s+{member}\b", info, re.M), \
            f"no {member} in the control archive:\n{info}"
    assert run("dpkg-deb", "--info", deb, "conffiles").stdout.split() == [str(CONFIG)]
    for script in ["postinst", "prerm", "postrm"]:
        text = run("dpkg-deb", "--info", deb, script).stdout
        subprocess.run(["sh", "-n"], input=text, text=True, check=True)
        # systemctl and deb-systemd-invoke only where systemd runs (not in CI containers).
        if "systemctl" in text or "deb-systemd-invoke" in text:
            assert "[ -d /run/systemd/system ]" in text, script


# --- Installed on this machine ------------------------------------------------------------------

def _installed_status() -> str:
    result = run("dpkg-query", "-W", "-f=${db:Status-Abbrev}", "edged", check=False)
    return result.stdout.strip() if result.returncode == 0 else ""


def _purge() -> None:
    run("dpkg", "--purge", "edged", check=False)


@pytest.fixture(scope="module")
def installed(deb: Path) -> Iterator[Path]:
    if not is_root():
        pytest.skip("installing the .deb needs root (CI runs as root)")
    if _installed_status().startswith("ii") or PREFIX.exists():
        pytest.skip("edged is already installed on this machine; this test would replace it")
    try:
        run("dpkg", "-i", deb, timeout=600)
        yield deb
    finally:
        _purge()


def installed_edged(*args: str, user: str | None = None, timeout: float = 120
                    ) -> subprocess.CompletedProcess[str]:
    cmd = ["/usr/bin/edged", *args]
    if user:
        cmd = ["runuser", "-u", user, "--", *cmd]
    return run(*cmd, check=False, timeout=timeout)


def test_installed_edged_checks_config_and_detects(installed: Path) -> None:
    result = installed_edged("version")
    assert result.returncode == 0 and _version() in result.stdout, result
    where = run(PREFIX / "bin/python", "-c", "import edged; print(edged.__file__)").stdout
    assert where.startswith(f"{PREFIX}/lib/python3.11/site-packages/edged/"), where

    result = installed_edged("check-config", str(CONFIG))
    assert result.returncode == 0, result.stderr

    result = installed_edged("detect", str(DATA / "media" / "zidane.jpg"), "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["model"] == str(MODEL)
    people = [d for d in doc["frames"][0]["detections"] if d["label"] == "person"]
    assert people and max(d["score"] for d in people) >= 0.5, doc


def test_installed_user_state_and_unit(installed: Path) -> None:
    user = run("getent", "passwd", "edged").stdout.split(":")
    assert user[5] == str(STATE) and user[6].strip().endswith("nologin"), user
    groups = run("id", "-nG", "edged").stdout.split()
    assert "video" in groups and "edged" in groups, groups
    st = STATE.stat()
    assert (st.st_mode & 0o777) == 0o750
    assert run("stat", "-c", "%U:%G", STATE).stdout.strip() == "edged:edged"
    # Enabled (deb-systemd-helper writes the symlink even where systemd does not run).
    assert WANTS.is_symlink() and os.readlink(WANTS) == "/lib/systemd/system/edged.service"
    # postinst compiled the bytecode.
    assert list((PREFIX / "lib/python3.11/site-packages/edged").glob("__pycache__/cli.*.pyc"))
    # The service user can read the model and run a detection.
    photo = STATE / "test-zidane.jpg"
    shutil.copyfile(DATA / "media" / "zidane.jpg", photo)
    photo.chmod(0o644)
    try:
        result = installed_edged("detect", str(photo), "--json", user="edged")
        assert result.returncode == 0, result.stderr
        found = json.loads(result.stdout)["frames"][0]["detections"]
        assert any(d["label"] == "person" for d in found)
    finally:
        photo.unlink()


def test_installed_daemon_runs_as_edged(installed: Path) -> None:
    """`edged run` as the unit would start it (user edged, /etc/edged/edged.yaml), on a file."""
    video = STATE / "test-vtest.avi"
    shutil.copyfile(DATA / "media" / "vtest.avi", video)
    video.chmod(0o644)
    dropin = CONFIG.parent / "conf.d" / "90-test.yaml"
    dropin.parent.mkdir(exist_ok=True)
    dropin.write_text(yaml.safe_dump({
        "source": {"uri": str(video)},
        "metrics": {"enabled": False},  # no port clash with a test or a daemon elsewhere
    }))
    runtime = Path("/run/edged")  # the unit's RuntimeDirectory=, which systemd would make
    made_runtime = not runtime.exists()
    runtime.mkdir(exist_ok=True)
    shutil.chown(runtime, "edged", "edged")
    try:
        result = installed_edged("run", "--config", str(CONFIG), "--max-frames", "20",
                                 user="edged", timeout=180)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        db = STATE / "events.db"
        assert db.exists()
        assert run("stat", "-c", "%U", db).stdout.strip() == "edged"
    finally:
        dropin.unlink(missing_ok=True)
        video.unlink(missing_ok=True)
        if made_runtime:
            shutil.rmtree(runtime, ignore_errors=True)


def _effective(check_config_stdout: str) -> dict[str, object]:
    """`edged check-config` prints a `# valid; ...` line, then the merged config as JSON."""
    return json.loads(check_config_stdout[check_config_stdout.index("{"):])


def test_local_config_edit_survives_reinstall(installed: Path) -> None:
    config = yaml.safe_load(CONFIG.read_text())
    config["detect"]["conf"] = 0.41
    edited = "# edited on this box\n" + yaml.safe_dump(config, sort_keys=False)
    CONFIG.write_text(edited)
    # What an unattended upgrade does: keep the admin's version of a changed conffile.
    run("dpkg", "-i", "--force-confold", installed, timeout=600)
    assert CONFIG.read_text() == edited
    assert _installed_status().startswith("ii")
    result = installed_edged("check-config", str(CONFIG))
    assert result.returncode == 0, result.stderr
    assert _effective(result.stdout)["detect"]["conf"] == 0.41  # type: ignore[index]
    # A reinstall recompiles the bytecode that prerm removed.
    assert list((PREFIX / "lib/python3.11/site-packages/edged").glob("__pycache__/cli.*.pyc"))


def test_remove_keeps_data_and_purge_deletes_it(installed: Path) -> None:
    marker = STATE / "events.db-test-marker"
    marker.write_text("kept on remove")
    run("dpkg", "--remove", "edged", timeout=300)
    assert _installed_status().startswith("rc")  # removed, config files kept
    assert not PREFIX.exists() and not Path("/usr/bin/edged").exists()
    assert marker.read_text() == "kept on remove"
    assert CONFIG.exists()
    assert not MODEL.exists()  # package files go; the data stays

    run("dpkg", "--purge", "edged", timeout=300)
    assert _installed_status() == ""
    for gone in [PREFIX, STATE, CONFIG.parent]:
        assert not gone.exists(), f"{gone} survived the purge"
    assert not WANTS.exists() and not WANTS.is_symlink()


# --- The wheel, for people who bring their own service manager -----------------------------------

def test_wheel_installs_into_a_fresh_venv(wheel: Path, tmp_path: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    source = {p.relative_to(ROOT).as_posix() for p in (ROOT / "edged").rglob("*.py")}
    assert source <= names, f"missing from the wheel: {sorted(source - names)}"

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    # The same pinned wheels the .deb was built from (make deb keeps them in
    # build/deb/wheelhouse): offline and fast, the same resolution as from PyPI.
    run(venv / "bin/pip", "install", "--quiet", "--no-index", "--find-links",
        ROOT / "build/deb/wheelhouse", wheel, timeout=600)
    result = run(venv / "bin/edged", "version")
    assert result.stdout.startswith(f"edged {_version()} "), result.stdout
    result = run(venv / "bin/edged", "detect", DATA / "media/zidane.jpg", "--json",
                 "--model", DATA / "models/yolov3-tiny.onnx")
    found = json.loads(result.stdout)["frames"][0]["detections"]
    assert any(d["label"] == "person" for d in found)


# --- lintian (last: it has been running since the build) -----------------------------------------

def test_lintian_reports_no_errors(lintian: Lintian | None) -> None:
    if lintian is None:
        pytest.skip("lintian is not installed and cannot be installed without root")
    rc, out = lintian.result(timeout=540)
    tags = re.findall(r"^([EWIPNXO]): edged[^:]*: (\S+)", out, re.M)
    errors = [line for line in out.splitlines() if line.startswith("E:")]
    warnings = [t for level, t in tags if level == "W"]
    summary = {t: warnings.count(t) for t in sorted(set(warnings))}
    print(f"\nlintian: {len(errors)} errors, {len(warnings)} warnings {summary}")
    assert not errors, "\n".join(errors[:50])
    assert rc == 0, f"lintian exited {rc}:\n{out[-3000:]}"  # 1: it failed; 2: --fail-on

"""The shipped systemd unit: systemd 252 loads it cleanly, its hardening score, the user that
sysusers.d creates for it, and the invariants the daemon relies on (the notify protocol, the
stop budget, the exit codes that must not restart, the writable directories)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edged.config import DEFAULT_CONFIG_PATH, DaemonConfig, StoreConfig
from edged.exitcodes import ExitCode

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "edged.service"
SYSUSERS = ROOT / "systemd" / "edged.sysusers.conf"
MAX_EXPOSURE = 2.5  # `systemd-analyze security`: 0 = locked down, 10 = fully exposed


def _tool(name: str) -> str:
    # Like a missing asset, a missing tool is a broken setup, never a reason to skip.
    path = shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/bin"]))
    if path is None:
        pytest.fail(f"{name} not found; install Debian's `systemd` package", pytrace=False)
    return path


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120)


def _unit_copy(folder: Path, extra: str = "") -> Path:
    """The unit as `edged.service` in `folder`, its ExecStart on this venv's `edged` script.

    `verify` checks that ExecStart's binary exists and is executable; /usr/bin/edged only
    exists once the .deb is installed. `extra` lines go at the end of [Service]."""
    edged = Path(sys.executable).parent / "edged"
    assert edged.is_file(), f"{edged} missing: run `make setup`"
    text, count = re.subn(r"^ExecStart=/usr/bin/edged ", f"ExecStart={edged} ",
                          UNIT.read_text(), flags=re.MULTILINE)
    assert count == 1, "ExecStart= must start /usr/bin/edged (the path the .deb installs)"
    if extra:
        text = text.replace("\n[Install]", f"\n{extra}\n\n[Install]")
    folder.mkdir(parents=True, exist_ok=True)
    copy = folder / "edged.service"
    copy.write_text(text)
    return copy


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = _tool("systemd-analyze")

    result = _run(analyze, "verify", str(_unit_copy(tmp_path / "unit")))

    # In a container, verify may warn about other units it loads (targets, slices): only lines
    # that name our unit count. verify does not resolve User=: on a machine without the
    # `edged` user it still passes, and that user is the sysusers file's job (tested below).
    output = result.stdout + result.stderr
    ours = [line for line in output.splitlines() if "edged.service" in line]
    assert result.returncode == 0 and not ours, f"rc={result.returncode}\n{output}"

    # Control: the same check does catch a mistake in our unit (an unknown key is a warning
    # with rc 0, so the filter above is what finds it).
    broken = _run(analyze, "verify",
                  str(_unit_copy(tmp_path / "broken", extra="RestartPreventExitStats=78")))
    assert any("edged.service" in line and "RestartPreventExitStats" in line
               for line in (broken.stdout + broken.stderr).splitlines()), broken.stderr


def test_unit_security_exposure_is_at_most_2_5(tmp_path: Path) -> None:
    analyze = _tool("systemd-analyze")

    result = _run(analyze, "security", "--offline=true", "--no-pager",
                  str(_unit_copy(tmp_path)))

    found = re.search(r"Overall exposure level for edged\.service: (\d+(?:\.\d+)?)",
                      result.stdout)
    assert found, f"rc={result.returncode}\n{result.stdout}\n{result.stderr}"
    score = float(found.group(1))
    print(f"systemd-analyze security --offline=true: edged.service exposure {score}")
    assert score <= MAX_EXPOSURE, result.stdout


def test_sysusers_file_creates_the_user_and_groups_the_unit_names(tmp_path: Path) -> None:
    sysusers = _tool("systemd-sysusers")
    unit = parse_unit(UNIT.read_text())["Service"]
    (tmp_path / "etc").mkdir()

    result = _run(sysusers, f"--root={tmp_path}", str(SYSUSERS))

    assert result.returncode == 0, result.stderr
    passwd = {line.split(":")[0]: line.split(":")
              for line in (tmp_path / "etc" / "passwd").read_text().splitlines()}
    members = {fields[0]: set(filter(None, fields[3].split(",")))
               for line in (tmp_path / "etc" / "group").read_text().splitlines()
               if (fields := line.split(":"))}
    user = last(unit, "User")
    assert user in passwd
    assert passwd[user][5] == str(StoreConfig().path.parent)  # home = StateDirectory
    assert passwd[user][6] == "/usr/sbin/nologin"
    assert last(unit, "Group") in members
    for group in words(unit, "SupplementaryGroups"):
        assert user in members.get(group, set()), f"{user} not in group {group}"


def test_unit_keeps_the_invariants_the_daemon_relies_on() -> None:
    unit = parse_unit(UNIT.read_text())
    service = unit["Service"]

    # sd_notify: READY/STATUS/WATCHDOG come from the supervisor, never from a worker.
    assert last(service, "Type") == "notify"
    assert last(service, "NotifyAccess") == "main"
    # The supervisor gets SIGTERM alone and stops its workers in order.
    assert last(service, "KillMode") == "mixed"
    assert last(service, "ExecStart") == f"/usr/bin/edged run --config {DEFAULT_CONFIG_PATH}"
    assert re.fullmatch(r"/bin/kill -(s )?(SIG)?HUP \$MAINPID", last(service, "ExecReload"))

    # The watchdog is on, and the stop budget covers the daemon's own clean stop.
    assert parse_timespan(last(service, "WatchdogSec")) > 0
    assert parse_timespan(last(service, "TimeoutStopSec")) > DaemonConfig().stop_timeout_s
    assert parse_timespan(last(service, "TimeoutStartSec")) >= 60

    # Bad config and unavailable model/source stay down; a crash loop (70) is retried, with
    # systemd's rate limit in [Unit].
    assert last(service, "Restart") == "on-failure"
    prevent = words(service, "RestartPreventExitStatus")
    assert {str(int(ExitCode.CONFIG)), str(int(ExitCode.UNAVAILABLE))} <= set(prevent)
    assert str(int(ExitCode.SOFTWARE)) not in prevent
    assert last(unit["Unit"], "StartLimitIntervalSec")
    assert int(last(unit["Unit"], "StartLimitBurst")) > 0

    # Under ProtectSystem=strict the daemon can write only where its defaults point.
    assert last(service, "ProtectSystem") == "strict"
    assert Path("/var/lib", last(service, "StateDirectory")) == StoreConfig().path.parent
    assert Path("/run", last(service, "RuntimeDirectory")) == DaemonConfig().runtime_dir
    assert Path("/etc", last(service, "ConfigurationDirectory")) == DEFAULT_CONFIG_PATH.parent

    # Unprivileged, with device access only through the allow-list.
    assert last(service, "User") not in ("", "root")
    assert last(service, "CapabilityBoundingSet") == ""
    assert last(service, "DevicePolicy") == "closed"
    assert "char-video4linux rw" in service["DeviceAllow"]
    assert last(service, "PrivateDevices", "no") in ("no", "false")  # would hide cameras


# --- a small reader for unit files -----------------------------------------------------------


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> values in order. As in systemd, an empty assignment resets a list
    (its "" stays as the last value, so `CapabilityBoundingSet=` reads as empty)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.replace("\\\n", " ").splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"assignment outside a section: {line}"
        key, sep, value = line.partition("=")
        assert sep, f"not an assignment: {line}"
        values = current.setdefault(key.strip(), [])
        value = value.strip()
        if not value:
            values.clear()
        values.append(value)
    return sections


def last(section: dict[str, list[str]], key: str, default: str | None = None) -> str:
    if key not in section:
        assert default is not None, f"{key}= is not set"
        return default
    return section[key][-1]


def words(section: dict[str, list[str]], key: str) -> list[str]:
    return [word for value in section.get(key, []) for word in value.split()]


_UNITS_S = {"us": 1e-6, "usec": 1e-6, "ms": 1e-3, "msec": 1e-3, "s": 1, "sec": 1,
            "second": 1, "seconds": 1, "m": 60, "min": 60, "minute": 60, "minutes": 60,
            "h": 3600, "hr": 3600, "hour": 3600, "hours": 3600}


def parse_timespan(text: str) -> float:
    """systemd.time(7) time span in seconds: "30", "30s", "3min", "1min 30s", "infinity"."""
    if text.strip() == "infinity":
        return float("inf")
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", text.strip())
    assert parts and "".join(f"{n}{u}" for n, u in parts) == text.replace(" ", ""), text
    return sum(float(number) * _UNITS_S[unit or "s"] for number, unit in parts)


@pytest.mark.parametrize(("text", "seconds"), [("30", 30), ("30s", 30), ("3min", 180),
                                               ("1min 30s", 90), ("500ms", 0.5)])
def test_parse_timespan(text: str, seconds: float) -> None:
    assert parse_timespan(text) == seconds

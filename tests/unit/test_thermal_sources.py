"""Temperature and throttle sources on a fake sysfs tree and a fake `vcgencmd` executable."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from edged.governor_config import ThermalConfig
from edged.thermal import Reading, ThermalSources, decode_throttled

VCGENCMD = """#!/bin/sh
case "$1" in
  measure_temp) echo "temp=61.2'C" ;;
  get_throttled) echo "throttled=0x50005" ;;
  *) echo "unknown command" >&2; exit 1 ;;
esac
"""


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _zone(root: Path, n: int, kind: str, temp: str | None) -> Path:
    folder = root / "class/thermal" / f"thermal_zone{n}"
    _write(folder / "type", kind + "\n")
    if temp is None:  # a `temp` that cannot be read: a directory where the file should be
        (folder / "temp").mkdir()
    else:
        _write(folder / "temp", temp + "\n")
    return folder


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    root = tmp_path / "sys"
    _zone(root, 0, "cpu-thermal", "48300")
    _zone(root, 1, "gpu-thermal", "garbage")
    _zone(root, 2, "ddr-thermal", None)
    _zone(root, 3, "disabled", "-274000")
    _zone(root, 10, "soc-thermal", "52000")  # sorts after zone 3, not after zone 1
    cpu = root / "devices/system/cpu"
    for n, cur in ((0, "1200000"), (1, "600000")):
        _write(cpu / f"cpu{n}/cpufreq/scaling_cur_freq", cur)
        _write(cpu / f"cpu{n}/cpufreq/cpuinfo_max_freq", "2000000")
        _write(cpu / f"cpu{n}/cpufreq/scaling_max_freq", "1500000")
    return root


@pytest.fixture
def vcgencmd_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    script = bin_dir / "vcgencmd"
    _write(script, VCGENCMD)
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    return script


def _sources(root: Path, **overrides: Any) -> ThermalSources:
    return ThermalSources(ThermalConfig(sysfs_root=root, **overrides))


def test_readings_skip_broken_zones_and_report_each_once(sysfs: Path) -> None:
    with capture_logs() as logs:
        sources = _sources(sysfs, vcgencmd="never")
        for _ in range(5):
            readings = sources.read()
    assert readings == [Reading("cpu-thermal", 48.3), Reading("soc-thermal", 52.0)]
    assert sources.hottest() == 52.0
    unreadable = [e for e in logs if e["event"] == "thermal.sensor_unreadable"]
    assert sorted(e["sensor"] for e in unreadable) == ["ddr-thermal", "disabled", "gpu-thermal"]
    reasons = {e["sensor"]: e["error"] for e in unreadable}
    assert reasons["gpu-thermal"] == "not an integer"
    assert "implausible" in reasons["disabled"]
    described = sources.describe()
    assert [d["zone"] for d in described] == [
        "cpu-thermal", "gpu-thermal", "ddr-thermal", "disabled", "soc-thermal"]
    assert described[0]["path"] == str(sysfs / "class/thermal/thermal_zone0/temp")
    assert described[0]["kind"] == "sysfs"


def test_a_zone_that_recovers_is_read_again(sysfs: Path) -> None:
    sources = _sources(sysfs, vcgencmd="never", zones=["gpu-thermal"])
    assert sources.read() == []
    _write(sysfs / "class/thermal/thermal_zone1/temp", "71500")
    assert sources.read() == [Reading("gpu-thermal", 71.5)]


def test_jetson_zone_selection_by_type_or_directory(tmp_path: Path) -> None:
    root = tmp_path / "sys"
    for n, (kind, temp) in enumerate(
        [("CPU-therm", "55500"), ("GPU-therm", "53000"), ("tj-therm", "57250"),
         ("PMIC-Die", "100000")]
    ):
        _zone(root, n, kind, temp)
    with capture_logs() as logs:
        sources = _sources(root, vcgencmd="never",
                           zones=["cpu-therm", "TJ-THERM", "thermal_zone1", "aux-therm"])
    assert [r.zone for r in sources.read()] == ["CPU-therm", "GPU-therm", "tj-therm"]
    assert sources.hottest() == 57.25
    assert [(e["event"], e["zone"]) for e in logs if "zone" in e] == [
        ("thermal.zone_not_found", "aux-therm")]


def test_duplicate_zone_types_get_distinct_names(tmp_path: Path) -> None:
    root = tmp_path / "sys"
    _zone(root, 0, "cpu-thermal", "40000")
    _zone(root, 1, "cpu-thermal", "45000")
    names = [r.zone for r in _sources(root, vcgencmd="never").read()]
    assert names == ["cpu-thermal/thermal_zone0", "cpu-thermal/thermal_zone1"]


def test_vcgencmd_on_path_gives_throttle_flags_and_temperature_where_asked(
    sysfs: Path, vcgencmd_on_path: Path
) -> None:
    auto = _sources(sysfs)  # sysfs zones exist: vcgencmd only for throttle flags
    assert "vcgencmd" not in [r.zone for r in auto.read()]
    assert auto.throttling() == {
        "cpufreq_ratio": 0.6,  # the fastest core: 1.2 of 2.0 GHz
        "cpufreq_cap_ratio": 0.75,
        "rpi_throttled": "0x50005",
        "rpi_flags": ["under_voltage", "throttled", "under_voltage_occurred",
                      "throttled_occurred"],
    }
    always = _sources(sysfs, vcgencmd="always")
    assert Reading("vcgencmd", 61.2) in always.read()
    assert always.hottest() == 61.2
    assert always.describe()[-1] == {"zone": "vcgencmd", "type": "rpi-soc",
                                     "path": str(vcgencmd_on_path), "kind": "vcgencmd"}


def test_vcgencmd_alone_when_the_board_has_no_zone(
    tmp_path: Path, vcgencmd_on_path: Path
) -> None:
    sources = _sources(tmp_path / "empty")
    assert sources.read() == [Reading("vcgencmd", 61.2)]
    assert sources.throttling() == {
        "rpi_throttled": "0x50005",
        "rpi_flags": ["under_voltage", "throttled", "under_voltage_occurred",
                      "throttled_occurred"],
    }


def test_configured_vcgencmd_path_that_fails_is_reported_once(tmp_path: Path) -> None:
    script = tmp_path / "tools" / "vcgencmd"
    _write(script, "#!/bin/sh\necho 'VCHI initialization failed' >&2\nexit 255\n")
    script.chmod(0o755)
    with capture_logs() as logs:
        sources = _sources(tmp_path / "empty", vcgencmd_path=script)
        for _ in range(4):
            assert sources.read() == []
            assert sources.throttling() == {}
    errors = [(e["sensor"], e["error"]) for e in logs if e["event"] == "thermal.sensor_unreadable"]
    assert errors == [("vcgencmd:measure_temp", "exit status 255"),
                      ("vcgencmd:get_throttled", "exit status 255")]


def test_no_sensor_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))
    with capture_logs() as logs:
        sources = _sources(tmp_path / "empty")
    assert sources.read() == [] and sources.hottest() is None
    assert sources.throttling() == {} and sources.describe() == []
    assert "thermal.no_sensor" in [e["event"] for e in logs]


def test_decode_throttled_bits() -> None:
    assert decode_throttled(0) == []
    assert decode_throttled(0x80008) == ["soft_temp_limit", "soft_temp_limit_occurred"]
    assert decode_throttled(0x2) == ["arm_freq_capped"]

"""Temperature and throttling sources: sysfs thermal zones, Raspberry Pi vcgencmd, cpufreq.

Jetson boards need nothing special: CPU-therm, GPU-therm and tj-therm are ordinary sysfs
zones. A sensor that cannot be read is logged once and skipped, never every tick.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import structlog

from edged.governor_config import ThermalConfig

log = structlog.get_logger(__name__)

# Disabled or broken zones report values like -274000 or 0x7fffffff; no working SoC is
# outside this range, so such a value is treated as an unreadable sensor, not as heat.
_PLAUSIBLE_C = (-40.0, 150.0)

_MEASURE_TEMP = re.compile(r"temp=\s*(-?\d+(?:\.\d+)?)\s*'C")
_GET_THROTTLED = re.compile(r"throttled=\s*(0x[0-9a-fA-F]+)")

# Bit meanings of `vcgencmd get_throttled` (Raspberry Pi documentation, "vcgencmd").
RPI_THROTTLE_BITS = {
    0: "under_voltage",
    1: "arm_freq_capped",
    2: "throttled",
    3: "soft_temp_limit",
    16: "under_voltage_occurred",
    17: "arm_freq_capped_occurred",
    18: "throttled_occurred",
    19: "soft_temp_limit_occurred",
}


@dataclass(frozen=True)
class Reading:
    zone: str
    celsius: float


@dataclass(frozen=True)
class _Zone:
    name: str
    type: str
    path: Path  # the zone's `temp` file


def decode_throttled(value: int) -> list[str]:
    """Names of the bits set in a `get_throttled` value, lowest bit first."""
    return [name for bit, name in RPI_THROTTLE_BITS.items() if value >> bit & 1]


class ThermalSources:
    """The temperature sensors and throttle signals of this board, found once at start."""

    def __init__(self, cfg: ThermalConfig) -> None:
        self._cfg = cfg
        self._reported: set[str] = set()
        self._zones = self._find_zones()
        self._vcgencmd = self._find_vcgencmd()
        self._vcgencmd_temp = self._vcgencmd is not None and (
            cfg.vcgencmd == "always" or not self._zones
        )
        self._cpufreq = sorted(
            (cfg.sysfs_root / "devices/system/cpu").glob("cpu[0-9]*/cpufreq"),
            key=lambda p: _natural(p.parent.name),
        )
        log.info(
            "thermal.sources",
            zones=[z.name for z in self._zones],
            vcgencmd=str(self._vcgencmd) if self._vcgencmd else None,
            vcgencmd_temperature=self._vcgencmd_temp,
            cpufreq_cpus=len(self._cpufreq),
        )
        if not self._zones and not self._vcgencmd_temp:
            # The governor then stays in its no-sensor mode; say so at start, not per tick.
            log.warning("thermal.no_sensor", root=str(cfg.sysfs_root / "class/thermal"))

    def read(self) -> list[Reading]:
        """One reading per sensor that answered; the others are skipped (logged once)."""
        readings = []
        for zone in self._zones:
            celsius = self._read_zone(zone)
            if celsius is not None:
                readings.append(Reading(zone.name, celsius))
        if self._vcgencmd_temp:
            celsius = self._read_vcgencmd_temp()
            if celsius is not None:
                readings.append(Reading("vcgencmd", celsius))
        return readings

    def hottest(self) -> float | None:
        """The highest current reading in °C, or None when no sensor answered."""
        readings = self.read()
        return max(r.celsius for r in readings) if readings else None

    def throttling(self) -> dict[str, object]:
        """What the board says about throttling; {} when it says nothing.

        cpufreq_ratio: the fastest core's current / hardware-max frequency (idle cores clock
        down on their own, so only the fastest one hints at a cap); cpufreq_cap_ratio: the
        lowest scaling_max_freq / cpuinfo_max_freq (a thermal cooling device lowers it);
        rpi_throttled / rpi_flags: `vcgencmd get_throttled`, raw and decoded.
        """
        out: dict[str, object] = {}
        cur, cap = self._cpufreq_ratios()
        if cur is not None:
            out["cpufreq_ratio"] = round(cur, 3)
        if cap is not None:
            out["cpufreq_cap_ratio"] = round(cap, 3)
        if self._vcgencmd is not None:
            text = self._run_vcgencmd(self._vcgencmd, "get_throttled")
            match = _GET_THROTTLED.search(text) if text is not None else None
            if match:
                out["rpi_throttled"] = match.group(1)
                out["rpi_flags"] = decode_throttled(int(match.group(1), 16))
            elif text is not None:
                self._report_once("vcgencmd:get_throttled", "unparsable output", text[:80])
        return out

    def describe(self) -> list[dict[str, str]]:
        """The temperature sources in use: zone name, type, path, kind."""
        found = [
            {"zone": z.name, "type": z.type, "path": str(z.path), "kind": "sysfs"}
            for z in self._zones
        ]
        if self._vcgencmd_temp and self._vcgencmd is not None:
            found.append(
                {"zone": "vcgencmd", "type": "rpi-soc", "path": str(self._vcgencmd),
                 "kind": "vcgencmd"}
            )
        return found

    # --- discovery -------------------------------------------------------------------------

    def _find_zones(self) -> list[_Zone]:
        base = self._cfg.sysfs_root / "class/thermal"
        dirs = sorted(base.glob("thermal_zone*"), key=lambda p: _natural(p.name))
        typed = []
        for zone_dir in dirs:
            try:
                kind = (zone_dir / "type").read_text().strip() or zone_dir.name
            except OSError:
                kind = zone_dir.name
            typed.append((zone_dir, kind))
        wanted = {w.lower() for w in self._cfg.zones} if self._cfg.zones is not None else None
        if wanted is not None:
            typed = [(d, t) for d, t in typed if t.lower() in wanted or d.name.lower() in wanted]
            seen = {t.lower() for _, t in typed} | {d.name.lower() for d, _ in typed}
            for missing in sorted(wanted - seen):
                log.warning("thermal.zone_not_found", zone=missing, root=str(base))
        counts: dict[str, int] = {}
        for _, kind in typed:
            counts[kind] = counts.get(kind, 0) + 1
        # Boards with several zones of one type (e.g. two "cpu-thermal") get the directory
        # appended, so every Reading names one sensor.
        return [
            _Zone(kind if counts[kind] == 1 else f"{kind}/{d.name}", kind, d / "temp")
            for d, kind in typed
        ]

    def _find_vcgencmd(self) -> Path | None:
        if self._cfg.vcgencmd == "never":
            return None
        if self._cfg.vcgencmd_path is not None:
            path = self._cfg.vcgencmd_path
            if not path.exists():
                log.warning("thermal.vcgencmd_missing", path=str(path))
                return None
            return path
        found = shutil.which("vcgencmd")
        return Path(found) if found else None

    # --- reads -----------------------------------------------------------------------------

    def _read_zone(self, zone: _Zone) -> float | None:
        try:
            raw = zone.path.read_text().strip()
            celsius = int(raw) / 1000.0
        except OSError as exc:
            self._report_once(zone.name, exc.strerror or type(exc).__name__, str(zone.path))
            return None
        except ValueError:
            self._report_once(zone.name, "not an integer", str(zone.path))
            return None
        return self._plausible(zone.name, celsius, str(zone.path))

    def _read_vcgencmd_temp(self) -> float | None:
        if self._vcgencmd is None:
            return None
        text = self._run_vcgencmd(self._vcgencmd, "measure_temp")
        if text is None:
            return None
        match = _MEASURE_TEMP.search(text)
        if not match:
            self._report_once("vcgencmd", "unparsable output", text[:80])
            return None
        return self._plausible("vcgencmd", float(match.group(1)), str(self._vcgencmd))

    def _run_vcgencmd(self, path: Path, command: str) -> str | None:
        key = f"vcgencmd:{command}"
        try:
            done = subprocess.run(
                [str(path), command],
                capture_output=True,
                text=True,
                timeout=self._cfg.vcgencmd_timeout_s,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            self._report_once(key, type(exc).__name__, str(path))
            return None
        if done.returncode != 0:
            self._report_once(key, f"exit status {done.returncode}", done.stderr.strip()[:80])
            return None
        return done.stdout

    def _plausible(self, name: str, celsius: float, where: str) -> float | None:
        low, high = _PLAUSIBLE_C
        if not low <= celsius <= high:
            self._report_once(name, f"implausible value {celsius:g} C", where)
            return None
        return celsius

    def _cpufreq_ratios(self) -> tuple[float | None, float | None]:
        cur_ratios, cap_ratios = [], []
        for folder in self._cpufreq:
            hw_max = self._read_khz(folder / "cpuinfo_max_freq")
            if not hw_max:
                continue
            cur = self._read_khz(folder / "scaling_cur_freq")
            if cur is not None:
                cur_ratios.append(cur / hw_max)
            if (folder / "scaling_max_freq").exists():
                cap = self._read_khz(folder / "scaling_max_freq")
                if cap is not None:
                    cap_ratios.append(cap / hw_max)
        return (max(cur_ratios) if cur_ratios else None, min(cap_ratios) if cap_ratios else None)

    def _read_khz(self, path: Path) -> int | None:
        try:
            return int(path.read_text().strip())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            self._report_once(f"cpufreq:{path.parent.parent.name}", type(exc).__name__, str(path))
            return None

    def _report_once(self, sensor: str, error: str, where: str) -> None:
        # Sensors fail persistently (a zone without a driver, a missing firmware call): one
        # line says so; repeating it every tick would bury everything else in the journal.
        if sensor in self._reported:
            return
        self._reported.add(sensor)
        log.warning("thermal.sensor_unreadable", sensor=sensor, error=error, where=where)


def _natural(name: str) -> tuple[str, int]:
    """thermal_zone10 after thermal_zone9."""
    digits = re.search(r"(\d+)$", name)
    return (name[: digits.start()], int(digits.group(1))) if digits else (name, -1)

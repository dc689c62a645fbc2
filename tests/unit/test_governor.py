"""Thermal governor: scripted temperature series on a fake clock, exact mode sequences."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest
from pydantic import ValidationError
from structlog.testing import capture_logs

from edged.governor import Governor, Transition
from edged.governor_config import ModeConfig, ThermalConfig


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _governor(**overrides: Any) -> tuple[Governor, FakeClock]:
    clock = FakeClock()
    sizes = overrides.pop("sizes_supported", True)
    return Governor(ThermalConfig(**overrides), sizes_supported=sizes, clock=clock), clock


def _drive(
    gov: Governor,
    clock: FakeClock,
    temps: Iterable[float | None],
    drops: float = 0.0,
    dt: float = 1.0,
) -> tuple[list[str], list[Transition]]:
    """One tick per temperature, `dt` seconds apart; the mode name after each tick."""
    names, changes = [], []
    for temp in temps:
        clock.now += dt
        change = gov.update(temp, drops)
        if change is not None:
            changes.append(change)
        names.append(gov.mode.name)
    return names, changes


def _steps(changes: list[Transition]) -> list[tuple[str, str, str]]:
    return [(c.old, c.new, c.reason) for c in changes]


def test_defaults_follow_the_seeds() -> None:
    gov, _ = _governor()
    assert gov.mode.name == "high"
    assert (gov.mode.input_size, gov.mode.fps, gov.mode.conf) == (640, 30, 0.5)
    assert [(m.input_size, m.fps, m.conf) for m in ThermalConfig().modes] == [
        (640, 30, 0.5), (416, 20, 0.6), (320, 10, 0.7)
    ]


def test_rising_ramp_steps_through_every_mode_at_its_threshold() -> None:
    gov, clock = _governor(ewma_alpha=1.0)  # unsmoothed: thresholds exact
    temps = [60, 64, 68, 70, 74, 78, 80, 83, 85, 88]
    names, changes = _drive(gov, clock, temps)
    assert names == ["high", "high", "high", "medium", "medium", "medium", "low", "low",
                     "critical", "critical"]
    assert _steps(changes) == [("high", "medium", "temperature"),
                               ("medium", "low", "temperature"),
                               ("low", "critical", "temperature")]
    assert [c.at for c in changes] == [4.0, 7.0, 9.0]  # no dwell on the way up
    assert gov.mode.paused and gov.transitions == 3
    assert changes[-1].settings == gov.mode


def test_a_step_is_smoothed_and_a_single_spike_changes_nothing() -> None:
    gov, clock = _governor()  # alpha 0.3
    names, changes = _drive(gov, clock, [60] * 5 + [84] + [60] * 10)
    assert changes == [] and set(names) == {"high"}
    # A sustained step to 84: smoothed 67.2, 72.2 (medium), 75.8, 78.2, 79.97, 81.2 (low);
    # it never reaches 85, so never critical.
    gov, clock = _governor()
    names, changes = _drive(gov, clock, [60] + [84] * 20)
    assert names[:8] == ["high", "high", "medium", "medium", "medium", "medium", "low", "low"]
    assert set(names[8:]) == {"low"}
    assert gov.smoothed_c == pytest.approx(84, abs=0.1)
    assert changes[0].temp_c == pytest.approx(72.24)


def test_oscillation_around_a_threshold_does_not_flap() -> None:
    gov, clock = _governor(ewma_alpha=1.0)
    names, changes = _drive(gov, clock, [69, 71] * 30)
    assert _steps(changes) == [("high", "medium", "temperature")]
    assert names[0] == "high" and set(names[1:]) == {"medium"}


def test_hysteresis_leaves_a_mode_only_below_entry_minus_hysteresis() -> None:
    gov, clock = _governor(ewma_alpha=1.0)
    _drive(gov, clock, [72])
    names, _ = _drive(gov, clock, [65.0] * 50)  # exit threshold is < 65, not <= 65
    assert set(names) == {"medium"}
    names, changes = _drive(gov, clock, [64.9])
    assert names == ["high"] and _steps(changes) == [("medium", "high", "cooled")]


def test_dwell_delays_stepping_down_one_mode_at_a_time() -> None:
    gov, clock = _governor(ewma_alpha=1.0, dwell_s=10)
    _drive(gov, clock, [82])  # t=1: straight from high to low
    assert gov.mode.name == "low"
    names, changes = _drive(gov, clock, [50] * 30)  # t=2..31
    # low -> medium at t=11 (10 s in low), medium -> high at t=21: one step per dwell.
    assert [(c.at, c.new) for c in changes] == [(11.0, "medium"), (21.0, "high")]
    assert names == ["low"] * 9 + ["medium"] * 10 + ["high"] * 11
    assert all(c.reason == "cooled" for c in changes)


def test_critical_pauses_and_resumes_below_its_exit_threshold() -> None:
    gov, clock = _governor(ewma_alpha=1.0, dwell_s=10)
    _drive(gov, clock, [72])  # t=1 medium
    names, changes = _drive(gov, clock, [86])  # t=2: up without waiting for the dwell
    assert names == ["critical"] and gov.mode.paused
    assert gov.mode.input_size == 320  # low's settings, paused
    names, _ = _drive(gov, clock, [82] * 20)  # below entry, above exit (80): stays paused
    assert set(names) == {"critical"}
    names, changes = _drive(gov, clock, [79] * 11)
    assert names[-1] == "low" and not gov.mode.paused
    assert _steps(changes) == [("critical", "low", "cooled")]
    names, changes = _drive(gov, clock, [74] * 11 + [64] * 11)
    assert _steps(changes) == [("low", "medium", "cooled"), ("medium", "high", "cooled")]


def test_a_failed_read_holds_the_mode_and_a_lost_sensor_falls_back() -> None:
    gov, clock = _governor(ewma_alpha=1.0, sensor_timeout_s=30)
    _drive(gov, clock, [75])
    with capture_logs() as logs:
        names, changes = _drive(gov, clock, [None] * 29)  # a few bad ticks: hold
        assert set(names) == {"medium"} and changes == []
        assert gov.smoothed_c == 75
        _drive(gov, clock, [75])
        names, changes = _drive(gov, clock, [None] * 40)
    assert names[:29] == ["medium"] * 29 and set(names[29:]) == {"high"}
    assert _steps(changes) == [("medium", "high", "no_sensor")]
    assert changes[0].temp_c is None and gov.smoothed_c is None
    assert [e["event"] for e in logs] == ["governor.no_sensor"]  # once per outage
    with capture_logs() as logs:
        names, changes = _drive(gov, clock, [76])
    assert _steps(changes) == [("high", "medium", "temperature")]
    assert [e["event"] for e in logs] == ["governor.sensor_restored"]


def test_no_sensor_at_all_stays_high_and_says_so_once() -> None:
    gov, clock = _governor(sensor_timeout_s=30)
    with capture_logs() as logs:
        names, changes = _drive(gov, clock, [None] * 120)
    assert set(names) == {"high"} and changes == [] and gov.transitions == 0
    assert gov.smoothed_c is None
    assert [(e["event"], e["mode"]) for e in logs] == [("governor.no_sensor", "high")]


def test_load_raises_frame_skip_before_lowering_resolution_and_undoes_in_reverse() -> None:
    gov, clock = _governor(ewma_alpha=1.0, load_step_s=5, load_relax_s=30,
                           load_max_extra_skip=2)
    _, up = _drive(gov, clock, [50] * 30, drops=0.5)
    seen = [(c.new, c.settings.input_size, c.settings.frame_skip) for c in up if c.settings]
    # low's own frame-skip is 2, plus the 2 added by load
    assert seen == [("high", 640, 2), ("high", 640, 3), ("medium", 416, 3), ("low", 320, 4)]
    assert [c.at for c in up] == [5.0, 10.0, 15.0, 20.0]
    assert all(c.reason == "load" for c in up)
    assert not gov.mode.paused  # load never pauses
    _, down = _drive(gov, clock, [50] * 130, drops=0.0)
    seen = [(c.new, c.settings.input_size, c.settings.frame_skip) for c in down if c.settings]
    assert seen == [("medium", 416, 3), ("high", 640, 3), ("high", 640, 2), ("high", 640, 1)]
    assert [c.at for c in down] == [50.0, 80.0, 110.0, 140.0]  # slow probing back


def test_load_on_top_of_a_thermal_mode_and_heat_wins() -> None:
    gov, clock = _governor(ewma_alpha=1.0, load_step_s=5, load_max_extra_skip=1)
    _drive(gov, clock, [72] * 12, drops=0.5)  # medium (t=1), skip +1 at t=6, low at t=11
    assert (gov.mode.name, gov.mode.input_size, gov.mode.frame_skip) == ("low", 320, 3)
    assert gov.thermal_mode == "medium"
    _, changes = _drive(gov, clock, [90], drops=0.5)
    assert _steps(changes) == [("low", "critical", "temperature")] and gov.mode.paused
    _, changes = _drive(gov, clock, [90] * 20, drops=0.9)  # paused: drops ignored
    assert changes == []


def test_fixed_shape_model_keeps_its_size_and_sheds_work_by_frame_skip() -> None:
    with capture_logs() as logs:
        gov, clock = _governor(ewma_alpha=1.0, sizes_supported=False)
    assert [e["event"] for e in logs] == ["governor.fixed_input_size"]
    _drive(gov, clock, [72])
    assert (gov.mode.name, gov.mode.input_size, gov.mode.frame_skip, gov.mode.conf) == (
        "medium", 640, 2, 0.6)  # (640/416)^2 = 2.4 -> skip 2
    _drive(gov, clock, [82])
    assert (gov.mode.input_size, gov.mode.frame_skip) == (640, 8)  # low skip 2 x (640/320)^2
    gov, clock = _governor(ewma_alpha=1.0, sizes_supported=False, load_step_s=1)
    _drive(gov, clock, [50] * 20, drops=0.9)
    assert (gov.mode.name, gov.mode.input_size, gov.mode.frame_skip) == ("high", 640, 3)


def test_per_model_ladder() -> None:
    ladder = [ModeConfig(name="high", input_size=416, fps=30, frame_skip=1, conf=0.5),
              ModeConfig(name="medium", input_size=320, fps=20, frame_skip=1, conf=0.6),
              ModeConfig(name="low", input_size=256, fps=10, frame_skip=2, conf=0.7)]
    gov, clock = _governor(ewma_alpha=1.0, modes=ladder)
    sizes = []
    for temp in (60, 72, 82):
        _drive(gov, clock, [temp])
        sizes.append(gov.mode.input_size)
    assert sizes == [416, 320, 256]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"medium_at_c": 80, "low_at_c": 75}, "thresholds must ascend"),
        ({"load_low_drop_rate": 0.3, "load_high_drop_rate": 0.2}, "load_low_drop_rate"),
        ({"modes": [{"name": "high", "input_size": 320, "fps": 30, "frame_skip": 1, "conf": 0.5},
                    {"name": "medium", "input_size": 416, "fps": 20, "frame_skip": 1,
                     "conf": 0.6},
                    {"name": "low", "input_size": 320, "fps": 10, "frame_skip": 2,
                     "conf": 0.7}]}, "must not cost more"),
        ({"modes": [{"name": "low", "input_size": 320, "fps": 10, "frame_skip": 2,
                     "conf": 0.7}]}, "high, medium, low"),
        ({"hysteresis_c": -1}, "greater than or equal"),
        ({"tresholds": 1}, "Extra inputs"),
    ],
)
def test_config_rejects_inconsistent_settings(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ThermalConfig(**overrides)

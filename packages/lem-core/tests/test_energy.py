"""Energy figures of a window (lem.figures.energy) against hand-computed values, plus a hypothesis property."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lem.figures.energy import (
    PEAK_FROM_TIMELINE,
    PEAK_ONE_DEVICE,
    PEAK_SUM_OF_PEAKS,
    energy_figures,
    idle_power,
    peak_total_power,
)


def _window(duration: float, *energies: float | None, peak: float | None = 400.0) -> dict:
    return {
        "duration_s": duration,
        "devices": [
            {
                "device": i,
                "uuid": f"GPU-{i}",
                "energy_j": e,
                "method": "counter",
                "reason": None if e is not None else "broken",
                "mean_power_w": None,
                "peak_power_w": peak,
            }
            for i, e in enumerate(energies)
        ],
        "warnings": [],
    }


def test_energy_by_hand() -> None:
    idle = idle_power(_window(2.0, 200.0, 300.0))  # 100 W and 150 W
    assert idle == {0: 100.0, 1: 150.0}
    e, warnings = energy_figures(_window(4.0, 1000.0, 1200.0), None, idle, None, output_tokens=100)
    assert e["total_j"] == pytest.approx(2200.0)
    assert e["idle_j"] == pytest.approx(1000.0)  # (100 + 150) W × 4 s
    assert e["dynamic_j"] == pytest.approx(1200.0)
    assert e["j_per_output_token"] == pytest.approx(22.0)
    assert e["dynamic_j_per_output_token"] == pytest.approx(12.0)
    assert e["output_tokens_per_j"] == pytest.approx(100 / 2200)
    assert e["mean_power_w"] == pytest.approx(550.0)
    assert e["peak_power_w"] == pytest.approx(800.0)
    assert e["method"] == "counter"
    assert [d["dynamic_j"] for d in e["devices"]] == pytest.approx([600.0, 600.0])
    assert warnings == []


def test_no_meter_is_null_with_reason_never_zero() -> None:
    e, _ = energy_figures(None, "no energy meter available here", None, "no meter", output_tokens=10)
    assert e["total_j"] is None and e["j_per_output_token"] is None
    assert e["reason"] == "no energy meter available here"
    e, _ = energy_figures(_window(2.0, None), None, None, None, output_tokens=10)
    assert e["total_j"] is None and e["reason"] == "broken"


def test_short_window_and_missing_idle() -> None:
    e, warnings = energy_figures(_window(0.2, 50.0), None, None, "idle baseline skipped", output_tokens=5)
    assert e["total_j"] == 50.0 and e["idle_j"] is None and e["dynamic_j"] is None
    assert e["idle_reason"] == "idle baseline skipped"
    assert any("shorter than 1 s" in w for w in warnings)


@given(st.floats(0.1, 1e4), st.floats(0.0, 1e6), st.floats(0.0, 1e3), st.integers(0, 10**6))
def test_dynamic_is_total_minus_idle(duration: float, total: float, idle_w: float, tokens: int) -> None:
    e, _ = energy_figures(_window(duration, total), None, {0: idle_w}, None, output_tokens=tokens)
    assert e["dynamic_j"] == pytest.approx(e["total_j"] - e["idle_j"])
    assert e["idle_j"] == pytest.approx(idle_w * duration)


def test_peak_power_of_one_device_is_its_own_peak() -> None:
    e, _ = energy_figures(_window(4.0, 1000.0, peak=450.0), None, None, None, output_tokens=10)
    assert e["peak_power_w"] == pytest.approx(450.0)
    assert e["peak_power_method"] == PEAK_ONE_DEVICE


def test_peak_power_of_several_devices_without_timeline_is_a_labelled_upper_bound() -> None:
    e, _ = energy_figures(_window(4.0, 1000.0, 1200.0), None, None, None, output_tokens=10)
    assert e["peak_power_w"] == pytest.approx(800.0)  # 400 + 400, whether or not they coincided
    assert e["peak_power_method"] == PEAK_SUM_OF_PEAKS


def test_peak_total_power_interpolates_devices_to_common_instants() -> None:
    # GPU 0 peaks at 500 W at t=1.0 while GPU 1 sits at 100 W; GPU 1 peaks at 500 W
    # at t=2.05 while GPU 0 is back at 100 W. Sum of peaks: 1000 W; real peak 600 W.
    timeline = [
        {"t_s": 0.0, "device": 0, "power_w": 100.0},
        {"t_s": 0.05, "device": 1, "power_w": 100.0},
        {"t_s": 1.0, "device": 0, "power_w": 500.0},
        {"t_s": 1.05, "device": 1, "power_w": 100.0},
        {"t_s": 2.0, "device": 0, "power_w": 100.0},
        {"t_s": 2.05, "device": 1, "power_w": 500.0},
        {"t_s": 3.0, "device": 0, "power_w": None},  # a failed read is skipped
    ]
    peak = peak_total_power(timeline, [0, 1])
    # at t=1.0, GPU 1 is interpolated between (0.05, 100) and (1.05, 100): 100; at t=2.05 GPU 0 is held at 100
    assert peak == pytest.approx(600.0)
    # at t=2.0 GPU 1 is on its way up (100 + 400 * 0.95 = 480) and GPU 0 is at 100: 580, not the peak
    assert peak_total_power(timeline, [0, 2]) is None  # GPU 2 has no sample
    window = {**_window(4.0, 1000.0, 1200.0), "peak_power_w": peak}
    e, _ = energy_figures(window, None, None, None, output_tokens=10)
    assert e["peak_power_w"] == pytest.approx(600.0)
    assert e["peak_power_method"] == PEAK_FROM_TIMELINE


def test_peak_total_power_between_samples() -> None:
    timeline = [
        {"t_s": 0.0, "device": 0, "power_w": 200.0},
        {"t_s": 1.0, "device": 0, "power_w": 400.0},
        {"t_s": 0.5, "device": 1, "power_w": 300.0},
    ]
    # at t=0.5 GPU 0 is interpolated to 300: total 600; at t=1.0 GPU 1 is held at 300: total 700
    assert peak_total_power(timeline, [0, 1]) == pytest.approx(700.0)

"""The counter cross-check: a scripted fake counter (lem_energy_nvml.testing stands in for the GPU) against
the power timeline integrated, through the meter and lem's energy figures."""

from __future__ import annotations

import time

import attrs
import pytest

from lem.figures.energy import energy_figures
from lem.figures.uncertainty import budget
from lem.run.live import window_json
from lem_energy_nvml.meter import COUNTER_PERIOD_S, COUNTER_RESOLUTION_J
from lem_energy_nvml.plugin import open_meter
from lem_energy_nvml.testing import FakeGpu

UUID = "GPU-aaaaaaaa-1111-2222-3333-444444444444"


def _window(gpu: FakeGpu, seconds: float, interval_ms: float = 20.0) -> dict:
    meter = open_meter([0], interval_ms)
    meter.start()
    time.sleep(seconds)
    window = meter.stop()
    meter.close()
    out = window_json(window)
    assert out is not None
    return out


def test_an_agreeing_counter_is_within_the_threshold_and_its_period_is_timed(fake_nvml):
    gpu = FakeGpu(UUID, power_mw=200_000, counter_period_s=0.1)
    fake_nvml([gpu])
    w = _window(gpu, 1.2)
    (d,) = w["devices"]
    assert d["method"] == "counter" and d["resolution_j"] == COUNTER_RESOLUTION_J
    # The probe timed the scripted 100 ms steps (not the fallback constant by luck: see the next test).
    assert d["update_period_s"] == pytest.approx(0.1, abs=0.01)
    # 200 W over the window: the integrated timeline says so; the counter lags by under one period at each edge.
    assert d["integrated_j"] == pytest.approx(200.0 * w["duration_s"], rel=1e-6)
    assert abs(d["energy_j"] - d["integrated_j"]) <= 200.0 * 0.1 + 0.01
    e, warnings = energy_figures(w, None, None, None, output_tokens=100, cross_check_threshold=0.2)
    check = e["cross_check"]
    assert check["counter_j"] == d["energy_j"] and check["integrated_j"] == d["integrated_j"]
    assert check["rel_diff"] == pytest.approx((d["integrated_j"] - d["energy_j"]) / d["energy_j"])
    assert check["exceeds"] is False and check["short_window"] is False
    assert not any("disagree" in x for x in warnings)


def test_a_counter_reading_20_percent_high_exceeds_the_threshold(fake_nvml):
    gpu = FakeGpu(UUID, power_mw=150_000, counter_period_s=0.05, counter_gain=1.2)
    fake_nvml([gpu])
    w = _window(gpu, 1.5)
    (d,) = w["devices"]
    assert d["update_period_s"] == pytest.approx(0.05, abs=0.01)
    e, warnings = energy_figures(w, None, None, None, output_tokens=100, cross_check_threshold=0.05)
    check = e["cross_check"]
    # integrated / counter ≈ 1 / 1.2 give or take the counter's lag of up to one period at each edge.
    assert check["rel_diff"] == pytest.approx(1 / 1.2 - 1, abs=0.06)
    assert check["exceeds"] is True
    assert any("disagree by" in x and "cross_check_threshold 5%" in x for x in warnings)


def test_a_window_of_a_few_counter_periods_is_flagged_short(fake_nvml):
    gpu = FakeGpu(UUID, power_mw=300_000, counter_period_s=0.1)
    fake_nvml([gpu])
    w = _window(gpu, 0.2, interval_ms=10.0)
    e, warnings = energy_figures(w, None, None, None, output_tokens=10, cross_check_threshold=0.05)
    check = e["cross_check"]
    assert check["short_window"] is True and check["update_periods"] < 3
    assert any("counter update periods" in x for x in warnings)
    # The budget's update-period term is the edges' time bound over the window: aligned to the counter's
    # updates, a quarter period plus the read intervals, still a wide bound on a window this short.
    (d,) = w["devices"]
    assert 0.1 / 4 <= d["edge_lag_s"] < 0.1
    figures = {"energy.total_j": {"mean": e["total_j"], "rel_ci95": None}}
    terms = budget([e], figures, None)["figures"]["energy.total_j"]
    assert terms["update_period"] == pytest.approx(d["edge_lag_s"] / w["duration_s"])
    assert terms["update_period"] > 0.1
    assert terms["not_covered"] == ["run_to_run"] and terms["idle_baseline"] == 0.0


@pytest.mark.parametrize("phase_s", [0.0, 0.023, 0.047, 0.071, 0.094])
def test_edges_aligned_to_the_counter_updates_read_the_window_within_their_bound(fake_nvml, phase_s):
    """A counter that shows its value at its last 100 ms update, read as it is at both edges, is off by up
    to one period's energy (33% of a 0.3 s window); the meter aligns the edges to its updates instead. The
    window opens at whatever phase of the counter's period the test starts it."""
    gpu = FakeGpu(UUID, power_mw=200_000, counter_period_s=0.1)
    fake_nvml([gpu])
    meter = open_meter([0], 20.0)
    time.sleep(phase_s)
    meter.start()
    time.sleep(0.3)
    window = meter.stop()
    meter.close()
    (d,) = window.devices
    assert d.method == "counter" and d.edge_lag_s is not None
    assert d.edge_lag_s < 0.1  # aligned: a quarter period and the read intervals, not a whole period
    truth = 200.0 * window.duration_s
    assert abs(d.energy_j - truth) <= 200.0 * d.edge_lag_s
    assert abs(d.energy_j - truth) <= 0.03 * truth  # constant power: only the read intervals are left


def test_a_still_counter_falls_back_to_the_documented_period(fake_nvml):
    gpu = FakeGpu(UUID)  # the counter moves only when a test moves it
    fake_nvml([gpu])
    meter = open_meter([0], 50)
    meter.start()
    time.sleep(0.3)
    gpu.energy_mj = (gpu.energy_mj or 0) + 30_000
    window = meter.stop()
    meter.close()
    (d,) = window.devices
    assert d.update_period_s == COUNTER_PERIOD_S
    # Not seen advancing: its edges are read as they are, a whole period each way, and nothing waits on it.
    assert d.edge_lag_s == COUNTER_PERIOD_S and window.duration_s < 0.3 + 0.1
    assert d.integrated_j == pytest.approx(125.0 * window.duration_s, rel=1e-6)
    assert attrs.asdict(d)["integrated_j"] == d.integrated_j

"""The NVML meter against a fake pynvml (lem_energy_nvml.testing stands in for GPU hardware)."""

from __future__ import annotations

import time

import pytest

from lem_energy_nvml.library import SOURCE_INSTANT, SOURCE_POWER_USAGE
from lem_energy_nvml.meter import COUNTER_PERIOD_S, PROBE_THREAD, idle_power_w
from lem_energy_nvml.plugin import open_meter
from lem_energy_nvml.sampler import COLUMNS
from lem_energy_nvml.testing import FakeGpu

UUID_A = "GPU-aaaaaaaa-1111-2222-3333-444444444444"
UUID_B = "GPU-bbbbbbbb-1111-2222-3333-444444444444"


def window_over(meter, gpus, deltas_mj, seconds=0.0, during=None):
    """Open a window, advance each GPU's counter by its delta (as the hardware would), close it."""
    meter.start()
    if during:
        during()
    time.sleep(seconds)
    for gpu, delta in zip(gpus, deltas_mj, strict=True):
        if gpu.energy_mj is not None:
            gpu.energy_mj += delta
    return meter.stop()


def test_counter_energy_is_the_difference_of_the_edges(fake_nvml):
    gpu = FakeGpu(UUID_A, power_mw=300_000)
    fake_nvml([gpu])
    meter = open_meter([0], 50)
    window = window_over(meter, [gpu], [450_000], seconds=1.05)
    meter.close()
    (d,) = window.devices
    assert (d.device, d.uuid, d.method, d.reason) == (0, UUID_A, "counter", None)
    assert d.energy_j == 450.0
    assert window.total_j == 450.0
    assert d.mean_power_w == pytest.approx(450.0 / window.duration_s)
    assert d.peak_power_w == 300.0
    assert window.warnings == ()
    # The counter is read at the edges only (probe + start + stop), never by the sampler thread; the update
    # period is timed on a thread of its own when the meter opens.
    assert gpu.counter_readers and all(name != "lem-nvml-sampler" for name in gpu.counter_readers)
    assert len([name for name in gpu.counter_readers if name != PROBE_THREAD]) == 3


def test_energy_is_summed_over_gpus_and_reported_per_gpu(fake_nvml):
    gpus = [FakeGpu(UUID_A), FakeGpu(UUID_B)]
    fake_nvml(gpus)
    meter = open_meter([0, 1], 100)
    window = window_over(meter, gpus, [100_000, 250_500], seconds=1.0)
    meter.close()
    assert [(d.device, d.uuid, d.energy_j) for d in window.devices] == [(0, UUID_A, 100.0), (1, UUID_B, 250.5)]
    assert window.total_j == 350.5


def test_counter_reset_falls_back_to_power_integration_and_says_so(fake_nvml):
    gpu = FakeGpu(UUID_A, power_mw=200_000)
    fake_nvml([gpu])
    meter = open_meter([0], 20)
    meter.start()
    time.sleep(0.3)
    gpu.energy_mj = 5  # driver reload: the counter starts again from ~0
    window = meter.stop()
    (d,) = window.devices
    assert d.method == "power-integration"
    assert d.energy_j == pytest.approx(200.0 * window.duration_s, rel=0.05)
    assert any("went backwards" in w and "integrated from sampled power" in w for w in window.warnings)


def test_counter_that_does_not_advance_is_not_a_silent_zero(fake_nvml):
    gpu = FakeGpu(UUID_A, power_mw=150_000)
    fake_nvml([gpu])
    meter = open_meter([0], 10)
    window = window_over(meter, [gpu], [0], seconds=0.05)
    (d,) = window.devices
    assert d.energy_j != 0
    assert d.method == "power-integration"
    assert any("did not advance" in w for w in window.warnings)
    assert any("shorter than the energy counter's update period" in w for w in window.warnings)


def test_window_shorter_than_a_second_warns_about_granularity(fake_nvml):
    gpu = FakeGpu(UUID_A)
    fake_nvml([gpu])
    meter = open_meter([0], 100)
    window = window_over(meter, [gpu], [30_000], seconds=0.3)
    assert window.devices[0].method == "counter"
    assert any("shorter than ~1 s" in w and "granularity" in w for w in window.warnings)


def test_gpu_without_counter_integrates_instant_power(fake_nvml):
    gpu = FakeGpu(UUID_A, energy_mj=None, power_mw=250_000)
    fake_nvml([gpu])
    meter = open_meter([0], 20)
    window = window_over(meter, [gpu], [0], seconds=0.5)
    (d,) = window.devices
    assert d.method == "power-integration"
    assert d.energy_j == pytest.approx(250.0 * window.duration_s, rel=0.05)
    assert {row["power_source"] for row in window.timeline} == {SOURCE_INSTANT}
    assert meter.environment()[0]["energy_method"] == "power-integration"


def test_gpu_without_counter_or_instant_field_uses_power_usage_and_warns(fake_nvml):
    gpu = FakeGpu(UUID_A, energy_mj=None, instant_power=False)
    fake_nvml([gpu])
    meter = open_meter([0], 20)
    window = window_over(meter, [gpu], [0], seconds=0.2)
    assert window.devices[0].method == "power-integration"
    assert {row["power_source"] for row in window.timeline} == {SOURCE_POWER_USAGE}
    assert any("1 s moving average" in w for w in window.warnings)


def test_gpu_lost_mid_window_gives_none_with_the_reason(fake_nvml):
    gone, fine = FakeGpu(UUID_A), FakeGpu(UUID_B)
    fake_nvml([gone, fine])
    meter = open_meter([0, 1], 20)
    meter.start()
    time.sleep(0.1)
    gone.lost = True
    time.sleep(0.1)
    fine.energy_mj += 42_000
    window = meter.stop()
    lost, ok = window.devices
    assert lost.energy_j is None and lost.method is None
    assert "NVMLError_GpuIsLost" in lost.reason and "window's end" in lost.reason
    assert ok.energy_j == 42.0
    assert window.total_j is None  # a sum over a missing device is unknown, not partial


def test_lost_gpu_without_counter_gives_none_with_the_reason(fake_nvml):
    gpu = FakeGpu(UUID_A, energy_mj=None)
    fake_nvml([gpu])
    meter = open_meter([0], 20)
    meter.start()
    time.sleep(0.05)
    gpu.lost = True
    window = meter.stop()
    assert window.devices[0].energy_j is None
    assert "GPU is lost" in window.devices[0].reason


def test_idle_window_with_nothing_running_and_idle_helper(fake_nvml):
    gpu = FakeGpu(UUID_A, power_mw=125_000)
    fake_nvml([gpu])
    meter = open_meter([0], 100)

    def idle_sleep(seconds: float) -> None:
        # What the hardware does while idle: the counter advances by 125 W x the time slept.
        start = time.monotonic()
        time.sleep(seconds)
        gpu.energy_mj += round(125_000 * (time.monotonic() - start))

    watts = idle_power_w(meter, 1.2, sleep=idle_sleep)
    assert watts == pytest.approx(125.0, rel=0.05)


def test_timeline_rows_hold_every_reading(fake_nvml):
    gpus = [
        FakeGpu(UUID_A, power_mw=512_000, temperature_c=61, util=(97, 43), sm_clock_mhz=1755, throttle_mask=0x4 | 0x20),
        FakeGpu(UUID_B, power_mw=90_000),
    ]
    gpus[0].memory_used = 2048 * 1024 * 1024
    fake_nvml(gpus)
    meter = open_meter([0, 1], 20)
    window = window_over(meter, gpus, [1, 1], seconds=0.3)
    rows = window.timeline
    assert all(tuple(row) == COLUMNS for row in rows)
    first = [r for r in rows if r["device"] == 0]
    assert len(first) >= 5  # 0.3 s at 20 ms, with slack for a busy 2-core machine
    assert [r["t_s"] for r in first] == sorted(r["t_s"] for r in first)
    assert first[0]["t_s"] >= 0 and first[-1]["t_s"] <= window.duration_s + 0.01
    assert first[0] | {"t_s": 0} == {
        "t_s": 0,
        "device": 0,
        "power_w": 512.0,
        "power_source": SOURCE_INSTANT,
        "temperature_c": 61,
        "sm_util_pct": 97,
        "mem_util_pct": 43,
        "mem_used_mib": 2048.0,
        "sm_clock_mhz": 1755,
        "throttle_reasons": "sw_power_cap|sw_thermal",
    }
    assert {r["power_w"] for r in rows if r["device"] == 1} == {90.0}
    assert window.devices[0].peak_power_w == 512.0


def test_sampling_interval_reaches_the_sampler(fake_nvml):
    gpu = FakeGpu(UUID_A)
    fake_nvml([gpu])
    fast, slow = open_meter([0], 10), open_meter([0], 250)
    rows_fast = window_over(fast, [gpu], [1], seconds=0.5).timeline
    rows_slow = window_over(slow, [gpu], [1], seconds=0.5).timeline
    # 250 ms: the two edge samples and ~2 in between; 10 ms: dozens (lenient for a shared CPU).
    assert len(rows_slow) <= 5
    assert len(rows_fast) >= 15


def test_environment_describes_each_gpu(fake_nvml):
    fake_nvml([FakeGpu(UUID_A)])
    meter = open_meter([0], 100)
    (env,) = meter.environment()
    assert env == {
        "device": 0,
        "uuid": UUID_A,
        "name": "NVIDIA H100 80GB HBM3",
        "driver_version": "580.65.06",
        "cuda_driver_version": "13.0",
        "mig": False,
        "power_limit_w": 700.0,
        "persistence_mode": True,
        "max_sm_clock_mhz": 1980,
        "max_mem_clock_mhz": 2619,
        "memory_total_mib": 80 * 1024.0,
        "mig_mode": "disabled",
        "energy_method": "counter",
        "power_source": SOURCE_INSTANT,
        "unmeasurable_reason": None,
        # A counter that does not move when the meter opens: the documented period, not a timed one.
        "counter_update_period_s": COUNTER_PERIOD_S,
    }


def test_start_stop_misuse_is_loud(fake_nvml):
    fake_nvml([FakeGpu(UUID_A)])
    meter = open_meter([0], 100)
    with pytest.raises(RuntimeError, match="without start"):
        meter.stop()
    meter.start()
    with pytest.raises(RuntimeError, match="window is open"):
        meter.start()
    meter.close()  # also stops the open window's sampler
    with pytest.raises(RuntimeError, match="after close"):
        meter.start()

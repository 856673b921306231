"""The hooks, called through lem's real plugin manager (entry point ``nvml``).

Where a GPU is needed, lem_energy_nvml.testing stands in for it; the
"no driver" test uses the real pynvml on this GPU-less machine.
"""

from __future__ import annotations

import sys

import pytest

from lem.config import ExperimentConfig, MeasurementConfig
from lem.errors import MeterUnavailable
from lem.plugins import get_plugin_manager, meter_names
from lem_energy_nvml import plugin
from lem_energy_nvml.meter import NvmlMeter
from lem_energy_nvml.testing import FakeGpu


def config(**measurement) -> ExperimentConfig:
    return ExperimentConfig(model="tiny", measurement=MeasurementConfig(**measurement))


def measure(meter: str, devices=(0,), **measurement):
    hook = get_plugin_manager().hook
    return hook.measure_energy(meter=meter, devices=list(devices), config=config(**measurement))


def test_entry_point_registers_the_meter():
    assert "nvml" in meter_names()


@pytest.mark.parametrize("name", ["nvml", "auto"])
def test_measure_energy_opens_a_meter(fake_nvml, name):
    fake = fake_nvml([FakeGpu("GPU-aaaa")])
    meter = measure(name, sampling_interval_ms=40)
    assert isinstance(meter, NvmlMeter) and meter.name == "nvml"
    assert meter._sampler._interval_s == pytest.approx(0.04)  # the config key reaches the sampler
    meter.close()
    assert fake.shutdown_calls == 1


def test_other_meter_names_are_not_ours(fake_nvml):
    fake_nvml([FakeGpu("GPU-aaaa")])
    assert plugin.measure_energy(meter="rapl", devices=[0], config=config()) is None
    assert plugin.measure_energy(meter="none", devices=[0], config=config()) is None


def test_library_not_found(fake_nvml):
    fake_nvml([], init_error="NVMLError_LibraryNotFound")
    with pytest.raises(MeterUnavailable) as err:
        measure("nvml")
    assert str(err.value) == (
        "NVML library not found (pynvml.NVMLError_LibraryNotFound): "
        "no NVIDIA driver on this machine (libnvidia-ml.so.1 cannot be loaded)"
    )
    assert measure("auto") is None


def test_driver_not_loaded(fake_nvml):
    fake_nvml([], init_error="NVMLError_DriverNotLoaded")
    with pytest.raises(MeterUnavailable, match=r"NVML could not start \(pynvml.NVMLError_DriverNotLoaded\)"):
        measure("nvml")
    assert measure("auto") is None


def test_real_pynvml_on_a_machine_without_driver(monkeypatch):
    # The real nvidia-ml-py, no fake: on this GPU-less machine nvmlInit cannot find the library.
    monkeypatch.delitem(sys.modules, "pynvml", raising=False)
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError_LibraryNotFound:
        pass
    else:
        pynvml.nvmlShutdown()
        pytest.skip("this machine has an NVIDIA driver")
    with pytest.raises(MeterUnavailable, match=r"^NVML library not found \(pynvml.NVMLError_LibraryNotFound\)"):
        measure("nvml")
    assert measure("auto") is None


def test_pynvml_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    with pytest.raises(MeterUnavailable, match="pip install nvidia-ml-py"):
        measure("nvml")
    assert measure("auto") is None


def test_no_devices(fake_nvml):
    fake_nvml([FakeGpu("GPU-aaaa")])
    assert measure("auto", devices=()) is None
    with pytest.raises(MeterUnavailable, match="no CUDA devices to meter"):
        measure("nvml", devices=())


def test_wrong_device_raises_even_under_auto(fake_nvml):
    fake = fake_nvml([FakeGpu("GPU-aaaa")])
    with pytest.raises(MeterUnavailable, match="CUDA device 3 does not exist"):
        measure("auto", devices=(3,))
    assert fake.shutdown_calls == fake.init_calls == 1


def test_gpu_failing_at_open_raises_even_under_auto(fake_nvml):
    fake_nvml([FakeGpu("GPU-aaaa", lost=True)])
    with pytest.raises(MeterUnavailable, match=r"could not open CUDA devices \[0\]: NVMLError_GpuIsLost"):
        measure("auto")


def test_validate_config_warns_about_interval_and_short_idle():
    hook = get_plugin_manager().hook
    results = hook.validate_config(config=config(sampling_interval_ms=5, idle_seconds=0.5))
    mine = [p for problems in results for p in problems if p.path.startswith("measurement.")]
    assert {(p.severity, p.path) for p in mine} == {
        ("warning", "measurement.sampling_interval_ms"),
        ("warning", "measurement.idle_seconds"),
    }
    assert plugin.validate_config(config(sampling_interval_ms=5000))[0].value == 5000
    assert plugin.validate_config(config()) == []
    assert plugin.validate_config(config(sampling_interval_ms=5, energy_meter="none")) == []


def test_validate_config_checks_nvml_in_a_list_of_meters():
    (problem,) = plugin.validate_config(config(sampling_interval_ms=5, energy_meter=("nvml", "rapl")))
    assert problem.path == "measurement.sampling_interval_ms"
    assert plugin.validate_config(config(sampling_interval_ms=5, energy_meter=("rapl", "codecarbon"))) == []

"""Naming the GPUs a backend's model runs on (lem.accelerators), against lem-energy-nvml's FAKE pynvml:
this machine has no GPU, so fake boards stand in for the hardware NVML would report."""

from __future__ import annotations

import sys

import pytest

from lem import accelerators
from lem.configfile.loading import config_from_dict
from lem.figures import hardware
from lem.figures.requests import RequestTrace
from lem_energy_nvml.testing import FakeGpu, install

H100 = "NVIDIA H100 80GB HBM3"
A100 = "NVIDIA A100-SXM4-80GB"
PCI = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}


def test_fake_gpu_names_itself() -> None:
    assert FakeGpu(uuid="GPU-0").name == H100 and FakeGpu(uuid="GPU-0", name=A100).name == A100


def test_ordinals_map_through_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    nvml = install(monkeypatch, [FakeGpu(uuid="GPU-aaa", name=A100), FakeGpu(uuid="GPU-bbb", name=H100)])
    got = accelerators.describe((0,), {"CUDA_VISIBLE_DEVICES": "1", **PCI})
    assert got["device_name"] == H100 and got["device_reason"] is None and got["devices"] == [0]
    assert got["copy_bandwidth"] == {"gbs": None, "method": None, "reason": "not measured by this backend"}
    assert nvml.init_calls == nvml.shutdown_calls == 1  # NVML's session is closed again
    # A UUID prefix names one board whatever the order; unset, ordinals are NVML's indices.
    assert accelerators.device_names((0,), {"CUDA_VISIBLE_DEVICES": "GPU-aa"}) == ([A100], None)
    assert accelerators.device_names((0, 1), PCI) == ([A100, H100], None)


def test_what_cannot_be_named_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    gpus = [FakeGpu(uuid="GPU-aaa", name=A100), FakeGpu(uuid="GPU-bbb", name=H100)]
    install(monkeypatch, gpus)
    cases = {
        # Mixed models, numbered by CUDA (fastest first) rather than by PCI bus: the index may not be NVML's.
        "CUDA_DEVICE_ORDER=PCI_BUS_ID": ((0,), {"CUDA_VISIBLE_DEVICES": "1"}),
        "does not exist": ((1,), {"CUDA_VISIBLE_DEVICES": "0", **PCI}),
        "is a MIG slice": ((0,), {"CUDA_VISIBLE_DEVICES": "MIG-1234", **PCI}),
        "matches 2 GPUs": ((0,), {"CUDA_VISIBLE_DEVICES": "GPU-", **PCI}),
        "different models": ((0, 1), PCI),
    }
    for reason, (ordinals, env) in cases.items():
        got = accelerators.describe(ordinals, env)
        assert got["device_name"] is None and reason in got["device_reason"], (reason, got)
    gpus[1].mig_mode = 1
    got = accelerators.describe((1,), PCI)
    assert got["device_name"] is None and "MIG mode" in got["device_reason"]
    assert accelerators.describe((), none_reason="runs on the CPU") == {
        "device_name": None,
        "device_names": None,
        "device_reason": "runs on the CPU",
        "devices": [],
        "copy_bandwidth": dict(accelerators.NOT_MEASURED),
    }


def test_no_driver_and_no_pynvml_are_reasons_not_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, [FakeGpu(uuid="GPU-0")], init_error="NVMLError_DriverNotLoaded")
    names, why = accelerators.device_names((0,), {})
    assert names is None and "NVML could not start (NVMLError_DriverNotLoaded: Driver Not Loaded)" in str(why)
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml raises ImportError
    names, why = accelerators.device_names((0,), {})
    assert names is None and "pip install nvidia-ml-py" in str(why)


def test_the_backends_reason_reaches_the_null_figure() -> None:
    from lem.architectures import config_dict

    model_config = config_dict("tiny-llama")
    described = accelerators.describe((), none_reason="the server runs on hardware lem cannot see")
    info = {"model_config": model_config, "info": {"hardware": described}}
    traces = [RequestTrace(0, 16, 0, tuple(((k + 2) * 1_000_000, 1) for k in range(8)), True)]
    plain = config_from_dict({"model": "random:tiny-llama"})
    fl = hardware.flops_mod.cycle_flops(model_config, None, [(16, 8)])
    got = hardware.cycle_roofline(traces, info, plain, fl)
    assert got["memory_bandwidth_utilization"] is None
    assert got["mbu_reason"] == "the server runs on hardware lem cannot see; set [hardware] peak_memory_bandwidth_gbs"
    assert got["flops_reason"].startswith("the server runs on hardware lem cannot see; set [hardware] peak_tflops")
    over = config_from_dict({"model": "random:tiny-llama", "hardware": {"peak_memory_bandwidth_gbs": 100.0}})
    got = hardware.cycle_roofline(traces, info, over, fl)
    assert got["memory_bandwidth_utilization"] == pytest.approx(got["achieved_memory_bandwidth_gbs"] / 100.0)


def test_naming_and_metering_map_ordinals_by_one_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    """The backend's GPU name and the NVML meter's board come from the same mapping (map_ordinals): for each
    CUDA_VISIBLE_DEVICES, both pick the same board, or both refuse with the same words."""
    from lem.errors import MeterUnavailable
    from lem_energy_nvml.devices import resolve_devices

    gpus = [FakeGpu(uuid="GPU-aaa1", name=A100), FakeGpu(uuid="GPU-bbb2", name=H100), FakeGpu(uuid="GPU-aaa3")]
    nvml = install(monkeypatch, gpus)
    for visible in ("2,0", "GPU-bbb", "1,-1,0", "GPU-aaa", "7", "GPU-ccc", "0"):
        env = {"CUDA_VISIBLE_DEVICES": visible, **PCI}
        names, why = accelerators.device_names((0, 1) if "," in visible else (0,), env)
        try:
            devices, _ = resolve_devices(nvml, (0, 1) if "," in visible else (0,), env)
        except MeterUnavailable as exc:
            assert names is None and why is not None and why in str(exc), (visible, why, exc)
            continue
        assert names == [d.name for d in devices], visible

"""Which GPU llama.cpp's model is named after, for each way it can be offloaded.

llama.cpp here is a CPU build and this machine has no GPU, so for the GPU cases two things stand in for
hardware: ``llama_supports_gpu_offload`` is made to answer True (as a CUDA build does), and
lem-energy-nvml's FAKE pynvml reports two H100 boards. The CPU build's own answer is checked for real in
test_llamacpp_stream.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from llamacpp_helpers import make_config

from lem_backend_llamacpp import plugin
from lem_energy_nvml.testing import FakeGpu, install

H100 = "NVIDIA H100 80GB HBM3"
LAYERS = 2  # the tiny Llama's


@pytest.fixture
def gpu_build(monkeypatch: pytest.MonkeyPatch) -> None:
    import llama_cpp

    monkeypatch.setattr(llama_cpp, "llama_supports_gpu_offload", lambda: True)
    install(monkeypatch, [FakeGpu(uuid="GPU-0"), FakeGpu(uuid="GPU-1")])
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "PCI_BUS_ID")


def _hardware(monkeypatch: pytest.MonkeyPatch, visible: str | None, **table: Any) -> dict[str, Any]:
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    config = make_config("random:tiny-llama", llamacpp=table)
    return plugin._hardware(config, plugin._devices(config), LAYERS)


@pytest.mark.usefixtures("gpu_build")
def test_a_model_wholly_on_one_gpu_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    for visible, table in [
        ("1", {"n_gpu_layers": -1}),
        (None, {"n_gpu_layers": -1, "split_mode": "none", "main_gpu": 1}),
        (None, {"n_gpu_layers": LAYERS + 1, "tensor_split": [0.0, 1.0]}),
    ]:
        got = _hardware(monkeypatch, visible, **table)
        assert got["device_name"] == H100 and got["device_reason"] is None, (visible, table, got)
    assert _hardware(monkeypatch, None, n_gpu_layers=-1, split_mode="none", main_gpu=1)["devices"] == [1]


@pytest.mark.usefixtures("gpu_build")
def test_partial_offload_and_a_split_are_not_named(monkeypatch: pytest.MonkeyPatch) -> None:
    cases = [
        ("1", {"n_gpu_layers": 0}, "n_gpu_layers = 0: the model runs on the CPU"),
        # All repeating layers, but the output projection stays on the CPU until n_gpu_layers exceeds them.
        ("1", {"n_gpu_layers": LAYERS}, f"n_gpu_layers = {LAYERS} of {LAYERS} leaves part of the model in host"),
        (None, {"n_gpu_layers": -1}, "splits the model over every visible GPU"),
        ("0,1", {"n_gpu_layers": -1, "split_mode": "row"}, "splits the model over every visible GPU"),
    ]
    for visible, table, reason in cases:
        got = _hardware(monkeypatch, visible, **table)
        assert got["device_name"] is None and reason in got["device_reason"], (visible, table, got)

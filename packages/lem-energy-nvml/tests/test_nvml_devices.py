"""CUDA ordinals to NVML devices, through CUDA_VISIBLE_DEVICES (fake pynvml stands in for the GPUs)."""

from __future__ import annotations

import pytest

from lem.accelerators import parse_visible_devices
from lem.errors import MeterUnavailable
from lem_energy_nvml.devices import resolve_devices
from lem_energy_nvml.plugin import open_meter
from lem_energy_nvml.testing import FakeGpu

UUIDS = [f"GPU-{c * 8}-0000-0000-0000-00000000000{i}" for i, c in enumerate("abcd")]


@pytest.fixture
def four_gpus(fake_nvml):
    gpus = [FakeGpu(u) for u in UUIDS]
    return fake_nvml(gpus), gpus


@pytest.mark.parametrize(
    ("value", "entries"),
    [
        (None, None),
        ("", []),
        ("2,0", ["2", "0"]),
        (" 1 , 3 ", ["1", "3"]),
        ("1,-1,0", ["1"]),  # CUDA stops at the first invalid entry
        ("GPU-abc,MIG-def", ["GPU-abc", "MIG-def"]),
        ("0,foo,1", ["0"]),
    ],
)
def test_parse_visible_devices_follows_cuda(value, entries):
    assert parse_visible_devices(value) == entries


def test_unset_means_every_gpu_in_nvml_order(four_gpus):
    nvml, _ = four_gpus
    devices, warnings = resolve_devices(nvml, [0, 3], {})
    assert [(d.ordinal, d.uuid) for d in devices] == [(0, UUIDS[0]), (3, UUIDS[3])]
    assert warnings == []


def test_indices_are_remapped(four_gpus):
    nvml, _ = four_gpus
    devices, _ = resolve_devices(nvml, [0, 1], {"CUDA_VISIBLE_DEVICES": "2,0"})
    assert [d.uuid for d in devices] == [UUIDS[2], UUIDS[0]]


def test_uuids_and_unique_prefixes(four_gpus):
    nvml, _ = four_gpus
    env = {"CUDA_VISIBLE_DEVICES": f"{UUIDS[3]},GPU-bbbb"}
    devices, _ = resolve_devices(nvml, [0, 1], env)
    assert [d.uuid for d in devices] == [UUIDS[3], UUIDS[1]]


def test_ambiguous_or_unknown_uuid_is_a_clear_error(fake_nvml):
    nvml = fake_nvml([FakeGpu("GPU-abc1"), FakeGpu("GPU-abc2")])
    with pytest.raises(MeterUnavailable, match="'GPU-abc' matches 2 GPUs"):
        resolve_devices(nvml, [0], {"CUDA_VISIBLE_DEVICES": "GPU-abc"})
    with pytest.raises(MeterUnavailable, match="'GPU-fff' matches no GPU"):
        resolve_devices(nvml, [0], {"CUDA_VISIBLE_DEVICES": "GPU-fff"})


def test_ordinal_beyond_the_visible_devices(four_gpus):
    nvml, _ = four_gpus
    with pytest.raises(MeterUnavailable, match=r"CUDA device 1 does not exist .*'1,-1,0'.* exposes 1 device"):
        resolve_devices(nvml, [1], {"CUDA_VISIBLE_DEVICES": "1,-1,0"})
    with pytest.raises(MeterUnavailable, match="names GPU index 7, but NVML sees 4"):
        resolve_devices(nvml, [0], {"CUDA_VISIBLE_DEVICES": "7"})


def test_mig_slice_is_reported_not_attributable(fake_nvml, monkeypatch):
    mig_uuid = "MIG-12345678-aaaa-bbbb-cccc-dddddddddddd"
    board = FakeGpu(UUIDS[0], mig_mode=1, mig_uuids=("MIG-00000000-0000", mig_uuid))
    fake_nvml([board, FakeGpu(UUIDS[1])])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", f"{mig_uuid},{UUIDS[1]}")
    meter = open_meter([0, 1], 50)
    meter.start()
    board.energy_mj += 99_000  # the board's counter moves, but it is shared by every slice
    window = meter.stop()
    slice_, other = window.devices
    assert slice_.energy_j is None and slice_.method is None
    assert "MIG slice" in slice_.reason and "cannot be attributed" in slice_.reason and UUIDS[0] in slice_.reason
    assert slice_.uuid == mig_uuid
    assert other.energy_j is not None
    assert window.total_j is None
    assert {row["device"] for row in window.timeline} == {1}
    assert meter.environment()[0]["mig"] is True


def test_board_in_mig_mode_named_by_index_is_not_attributable(fake_nvml):
    nvml = fake_nvml([FakeGpu(UUIDS[0], mig_mode=1)])
    devices, _ = resolve_devices(nvml, [0], {})
    assert devices[0].mig and "MIG" in devices[0].unmeasurable


def test_legacy_mig_uuid_finds_its_parent(fake_nvml):
    nvml = fake_nvml([FakeGpu(UUIDS[0]), FakeGpu(UUIDS[1], mig_mode=1)])
    devices, _ = resolve_devices(nvml, [0], {"CUDA_VISIBLE_DEVICES": f"MIG-{UUIDS[1]}/1/0"})
    assert devices[0].mig and UUIDS[1] in devices[0].unmeasurable


def test_mixed_gpu_models_without_pci_order_warn(fake_nvml):
    nvml = fake_nvml([FakeGpu(UUIDS[0], name="NVIDIA A100"), FakeGpu(UUIDS[1], name="NVIDIA H100")])
    _, warnings = resolve_devices(nvml, [0], {})
    assert any("CUDA_DEVICE_ORDER=PCI_BUS_ID" in w for w in warnings)
    _, warnings = resolve_devices(nvml, [0], {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"})
    assert warnings == []
    _, warnings = resolve_devices(nvml, [0], {"CUDA_VISIBLE_DEVICES": UUIDS[1]})
    assert warnings == []  # UUIDs do not depend on the order

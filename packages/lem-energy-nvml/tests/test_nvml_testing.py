"""lem_energy_nvml.testing, the fake pynvml other packages' tests use: in-process and in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lem_energy_nvml.testing import FakeGpu, install, write_pynvml


def test_install_answers_the_calls_backends_make(monkeypatch: pytest.MonkeyPatch) -> None:
    gpus = [FakeGpu("GPU-a", name="Fake GPU"), FakeGpu("GPU-b", compute_capability=(8, 6))]
    install(monkeypatch, gpus)
    import pynvml

    pynvml.nvmlInit()
    handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
    assert [pynvml.nvmlDeviceGetName(h) for h in handles] == ["Fake GPU", "NVIDIA H100 80GB HBM3"]
    assert [pynvml.nvmlDeviceGetCudaComputeCapability(h) for h in handles] == [(9, 0), (8, 6)]
    gpus[0].energy_mj = 2_000_000
    assert pynvml.nvmlDeviceGetTotalEnergyConsumption(handles[0]) == 2_000_000
    assert pynvml.init_calls == 1


def test_write_pynvml_is_the_fake_in_a_subprocess(tmp_path: Path) -> None:
    shim = write_pynvml(tmp_path / "shim", 'GPUS = [FakeGpu(uuid=f"GPU-{i}", energy_mj=7 * i) for i in range(3)]')
    code = (
        "import pynvml; pynvml.nvmlInit(); h = pynvml.nvmlDeviceGetHandleByIndex(2); "
        "print(pynvml.nvmlDeviceGetCount(), pynvml.nvmlDeviceGetUUID(h), pynvml.nvmlDeviceGetTotalEnergyConsumption(h))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shim), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["3", "GPU-2", "14"]


def test_a_board_script_sets_readings_before_each_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``FakeGpu.script`` runs before every reading: here a marker file throttles and heats the board."""
    marker = tmp_path / "hot"
    reads: list[int] = []

    def script(gpu: FakeGpu) -> None:
        reads.append(1)
        hot = marker.exists()
        gpu.throttle_mask, gpu.temperature_c = (0x4, 80) if hot else (0x1, 40)

    install(monkeypatch, [FakeGpu("GPU-a", script=script)])
    import pynvml

    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    assert (pynvml.nvmlDeviceGetCurrentClocksEventReasons(h), pynvml.nvmlDeviceGetTemperature(h, 0)) == (0x1, 40)
    marker.touch()
    assert (pynvml.nvmlDeviceGetCurrentClocksEventReasons(h), pynvml.nvmlDeviceGetTemperature(h, 0)) == (0x4, 80)
    marker.unlink()
    assert pynvml.nvmlDeviceGetCurrentClocksEventReasons(h) == 0x1
    assert len(reads) == 5

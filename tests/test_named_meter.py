"""A meter named explicitly that cannot work here stops `lem run` before any model loads.

This CPU machine has no NVIDIA driver, so `energy_meter = "nvml"` (lem-energy-nvml is installed in this
session) cannot work; under "auto" the same machine runs and records null energy with the reason.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

EXP = """
model = "random:tiny-llama"
backend = "pytorch"
[dataset]
num_prompts = 2
input_length = 8
[generation]
max_output_tokens = 2
[measurement]
cycles = 1
warmup_requests = 0
energy_meter = "{meter}"
"""


def _nvml_works() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return False
    return True


@pytest.mark.skipif(_nvml_works(), reason="this machine has a working NVIDIA driver")
def test_named_nvml_meter_stops_before_the_model_loads(tmp_path: Path, lem) -> None:
    (tmp_path / "exp.toml").write_text(EXP.format(meter="nvml"))
    done = lem("run", "exp.toml", "--out", "out", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    [line] = done.stderr.strip().splitlines()
    assert "measurement.energy_meter = nvml cannot work here" in line
    assert "'auto'" in line  # says what to do instead
    assert not (tmp_path / "out").exists()  # stopped before a run directory, let alone a model


@pytest.mark.skipif(_nvml_works(), reason="this machine has a working NVIDIA driver")
def test_auto_still_runs_and_records_why_energy_is_null(tmp_path: Path, lem) -> None:
    (tmp_path / "exp.toml").write_text(EXP.format(meter="auto"))
    done = lem("run", "exp.toml", "--out", "out", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    [summary] = json.loads(done.stdout)["experiments"]
    assert summary["figures"]["energy.total_j"]["mean"] is None
    assert "nvml" in summary["energy_reason"]

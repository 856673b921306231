"""The ``rapl`` plugin through lem itself: entry point, hooks, and a whole run beside a GPU meter.

RAPL hardware is a fake powercap tree (fake_powercap.py: this machine has
none); the GPU meter and the backend are lem's scripted test doubles, so
the figures can be checked by hand.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_powercap import FakePowercap

import lem.testing.scripted as scripted
from lem.campaign.loop import CampaignOptions, run_campaign
from lem.configfile.loading import LoadedFile
from lem.errors import MeterUnavailable
from lem.testing import registered
from lem_energy_rapl import plugin


def _config(**measurement: object) -> object:
    return scripted.experiment({"measurement": measurement}).config


def test_the_entry_point_is_installed() -> None:
    out = subprocess.run([sys.executable, "-m", "lem", "plugins"], capture_output=True, text=True, check=True).stdout
    (row,) = [r for r in json.loads(out) if r["name"] == "rapl"]
    assert row["distribution"] == "lem-energy-rapl"
    assert {"measure_energy", "validate_config"} <= set(row["hooks"])


def test_auto_never_picks_rapl_and_a_named_rapl_opens(powercap: FakePowercap) -> None:
    powercap.zone("intel-rapl:0", "package-0", 0)
    assert plugin.measure_energy(meter="auto", devices=(0,), config=_config()) is None
    assert plugin.measure_energy(meter="nvml", devices=(0,), config=_config()) is None
    meter = plugin.measure_energy(meter="rapl", devices=(), config=_config(sampling_interval_ms=50.0))
    assert meter is not None and meter.name == "rapl"
    meter.close()


def test_a_named_rapl_without_rapl_is_unavailable(powercap: FakePowercap) -> None:
    with pytest.raises(MeterUnavailable, match="no RAPL package or dram zone"):
        plugin.measure_energy(meter="rapl", devices=(0,), config=_config())


def test_validate_warns_when_the_counters_would_be_read_at_the_edges_only() -> None:
    (problem,) = plugin.validate_config(config=_config(energy_meter=["rapl"], sampling_interval_ms=0.0))
    assert problem.severity == "warning" and problem.path == "measurement.sampling_interval_ms"
    assert plugin.validate_config(config=_config(energy_meter="nvml", sampling_interval_ms=0.0)) == []


@pytest.fixture
def scripted_backend() -> Iterator[None]:
    with registered(scripted, "scripted"):
        yield


def _burn(powercap: FakePowercap, stop: threading.Event) -> None:
    """The fake CPU: package 0 at 40 W, its DRAM at 4 W (1 ms steps, as RAPL updates about every ms)."""
    pkg = dram = 0
    last = time.monotonic()
    while not stop.wait(0.001):
        now = time.monotonic()
        pkg += round(40e6 * (now - last))
        dram += round(4e6 * (now - last))
        last = now
        powercap.set("intel-rapl:0", pkg)
        powercap.set("intel-rapl:0:0", dram)


def test_a_run_with_a_gpu_meter_and_rapl(powercap: FakePowercap, scripted_backend: None, tmp_path: Path) -> None:
    powercap.zone("intel-rapl:0", "package-0", 0, max_power_uw=200_000_000)
    powercap.zone("intel-rapl:0:0", "dram", 0)
    stop = threading.Event()
    burner = threading.Thread(target=_burn, args=(powercap, stop), daemon=True)
    burner.start()
    doc = {
        "dataset": {"num_prompts": 4, "input_length": 8},
        "generation": {"max_output_tokens": 4},
        "measurement": {
            "cycles": 1,
            "idle_seconds": 0.2,
            "warmup_requests": 0,
            "energy_meter": ["scripted", "rapl"],
            "sampling_interval_ms": 20.0,
        },
        "scripted": {"ttft_ms": 50.0, "itl_ms": 50.0},
    }
    try:
        out = tmp_path / "results"
        assert run_campaign(
            LoadedFile("t.toml", (scripted.experiment(doc),), ()),
            CampaignOptions(out_dir=out, in_process=True, quiet=True),
        )
    finally:
        stop.set()
        burner.join()
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    exp = run_dir / "exp"
    energy = json.loads((exp / "cycle-001.json").read_text())["energy"]
    by = {(d["component"], d["device"]): d for d in energy["devices"]}
    assert set(by) == {("gpu", 0), ("cpu", 0), ("dram", 0)}
    assert by[("cpu", 0)]["meter"] == "rapl" and by[("cpu", 0)]["method"] == "counter"
    # The fake CPU draws 40 W and its DRAM 4 W, idle or not (its own timing jitters on a busy machine).
    assert by[("cpu", 0)]["mean_power_w"] == pytest.approx(40.0, rel=0.25)
    assert by[("dram", 0)]["mean_power_w"] == pytest.approx(4.0, rel=0.25)
    assert by[("cpu", 0)]["idle_power_w"] == pytest.approx(40.0, rel=0.25)
    assert energy["total_includes"] == ["gpu 0 (scripted)", "cpu 0 (rapl)", "dram 0 (rapl)"]
    assert energy["components"]["cpu"]["method"] == "counter"
    with (exp / "timeline-001.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {(r["meter"], r["component"]) for r in rows} >= {("rapl", "cpu"), ("rapl", "dram")}
    env = json.loads((exp / "environment.json").read_text())
    assert [r["domain"] for r in env["gpus"] if r["meter"] == "rapl"] == ["package-0", "dram"]

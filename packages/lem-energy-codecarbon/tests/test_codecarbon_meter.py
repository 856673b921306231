"""The CodeCarbon meter with the real CodeCarbon (offline tracker, no network).

This machine (and CI) has no RAPL and no GPU, so CodeCarbon's CPU figure is
its ``cpu_load`` TDP guess and its RAM figure its per-module model: both must
come back labelled ``method = "estimate"`` with what they rest on.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import lem.testing.scripted as scripted
from lem.campaign.loop import CampaignOptions, run_campaign
from lem.configfile.loading import LoadedFile
from lem.testing import registered
from lem_energy_codecarbon import plugin
from lem_energy_codecarbon.meter import J_PER_KWH, CodecarbonMeter
from lem_energy_codecarbon.options import check_against_library

NO_RAPL = not Path("/sys/class/powercap/intel-rapl:0").exists()


def _config(table: dict[str, object] | None = None, **measurement: object) -> object:
    doc: dict[str, object] = {"measurement": {"energy_meter": "codecarbon", **measurement}}
    if table is not None:
        doc["codecarbon"] = table
    return scripted.experiment(doc).config


@pytest.fixture(scope="module")
def meter() -> Iterator[CodecarbonMeter]:
    """One real tracker for the module (its hardware setup takes seconds)."""
    began = time.perf_counter()
    opened = plugin.measure_energy(meter="codecarbon", devices=(), config=_config({"country_iso_code": "FRA"}))
    assert opened is not None
    opened.open_s = time.perf_counter() - began  # type: ignore[attr-defined]
    yield opened
    opened.close()


def test_every_tracker_argument_in_the_table_exists_in_the_installed_codecarbon() -> None:
    assert check_against_library() == []


def _busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        sum(range(1000))


def test_a_window_maps_kwh_to_joules_and_labels_the_estimates(meter: CodecarbonMeter) -> None:
    t = time.perf_counter()
    meter.start()
    start_s = time.perf_counter() - t
    _busy(1.5)
    window = meter.stop()
    # Hardware detection happened when the meter opened, not at the window's edge.
    assert start_s < 0.2 < meter.setup_s
    by = {d.component: d for d in window.devices}
    assert set(by) == {"cpu", "dram"}  # no GPU on this machine: no GPU figure, rather than a 0
    assert window.duration_s == pytest.approx(1.5, abs=0.2)
    for d in by.values():
        assert d.energy_j is not None and d.energy_j > 0
        assert d.mean_power_w == pytest.approx(d.energy_j / window.duration_s)
        assert d.co2eq_kg is not None and d.co2eq_kg > 0
        assert d.meter is None  # set by the composite when several meters run
    if NO_RAPL:
        assert by["cpu"].method == "estimate"
        assert "no CPU energy counter" in str(by["cpu"].reason) and "TDP" in str(by["cpu"].reason)
    assert by["dram"].method == "estimate" and "per memory module" in str(by["dram"].reason)
    # RAM power is CodeCarbon's constant for this machine's memory size, whatever the load.
    from codecarbon.external.ram import RAM

    ram_w = RAM()._calculate_ram_power(meter.tracker._conf["ram_total_size"])
    assert by["dram"].mean_power_w == pytest.approx(ram_w, rel=0.05)
    # CO2-equivalent: the energy at France's carbon intensity in CodeCarbon's table.
    from codecarbon.input import DataSource

    g_per_kwh = DataSource().get_global_energy_mix_data()["FRA"]["carbon_intensity"]
    for d in by.values():
        assert d.co2eq_kg == pytest.approx(d.energy_j / J_PER_KWH * g_per_kwh / 1000, rel=0.02)


def test_environment_says_how_each_part_is_obtained(meter: CodecarbonMeter) -> None:
    rows = {r["component"]: r for r in meter.environment()}
    assert set(rows) == {"cpu", "dram"}
    assert rows["dram"]["energy_method"] == "estimate" and rows["dram"]["estimate_basis"]
    assert rows["cpu"]["country_iso_code"] == "FRA" and rows["cpu"]["co2eq"] == "reported"
    if NO_RAPL:
        assert rows["cpu"]["how"] == "CodeCarbon cpu_load"
    assert rows["cpu"]["codecarbon_version"]


def test_without_a_country_energy_is_reported_but_not_co2() -> None:
    meter = plugin.measure_energy(meter="codecarbon", devices=(), config=_config())
    assert meter is not None
    try:
        meter.start()
        time.sleep(0.3)
        window = meter.stop()
        assert all(d.energy_j is not None and d.co2eq_kg is None for d in window.devices)
        assert meter.environment()[0]["co2eq"].startswith("not reported")
    finally:
        meter.close()


def test_auto_and_other_names_never_open_codecarbon() -> None:
    assert plugin.measure_energy(meter="auto", devices=(), config=_config()) is None
    assert plugin.measure_energy(meter="nvml", devices=(), config=_config()) is None


@pytest.mark.parametrize(
    ("table", "path", "message"),
    [
        ({"country_iso_code": "XXX"}, "codecarbon.country_iso_code", "not a country CodeCarbon has"),
        (
            {"country_iso_code": "FRA", "country_iso": "FRA"},
            "codecarbon.country_iso",
            "did you mean 'country_iso_code'?",
        ),
        (
            {"country_iso_code": "FRA", "tracking_mode": "gpu"},
            "codecarbon.tracking_mode",
            "must be 'machine' or 'process'",
        ),
        (
            {"country_iso_code": "FRA", "force_cpu_power_w": "90"},
            "codecarbon.force_cpu_power_w",
            "must be int or float",
        ),
        ({"country_iso_code": "FRA", "force_ram_power_w": -1}, "codecarbon.force_ram_power_w", "must be > 0"),
    ],
)
def test_table_errors(table: dict[str, object], path: str, message: str) -> None:
    problems = plugin.validate_config(config=_config(table))
    assert [(p.severity, p.path) for p in problems] == [("error", path)]
    assert message in problems[0].format()


def test_table_warnings() -> None:
    (no_country,) = plugin.validate_config(config=_config({}))
    assert no_country.severity == "warning" and "energy is reported, but not its CO2-equivalent" in no_country.message
    assert "measured" not in no_country.message  # CodeCarbon may only estimate: the warning claims no measurement
    unused = scripted.experiment({"measurement": {"energy_meter": "none"}, "codecarbon": {"country_iso_code": "FRA"}})
    (ignored,) = plugin.validate_config(config=unused.config)
    assert ignored.severity == "warning" and "ignored" in ignored.message


def test_the_entry_point_is_installed() -> None:
    out = subprocess.run([sys.executable, "-m", "lem", "plugins"], capture_output=True, text=True, check=True).stdout
    (row,) = [r for r in json.loads(out) if r["name"] == "codecarbon"]
    assert row["distribution"] == "lem-energy-codecarbon"


def test_a_run_beside_a_gpu_meter_keeps_both_and_labels_the_estimates(tmp_path: Path) -> None:
    """The scripted GPU meter of lem.testing and the real CodeCarbon together, through lem's runner."""
    doc = {
        "dataset": {"num_prompts": 4, "input_length": 8},
        "generation": {"max_output_tokens": 4},
        "measurement": {
            "cycles": 1,
            "idle_seconds": 0.3,
            "warmup_requests": 0,
            "energy_meter": ["scripted", "codecarbon"],
        },
        "scripted": {"ttft_ms": 100.0, "itl_ms": 100.0},
        "codecarbon": {"country_iso_code": "DEU"},
    }
    out = tmp_path / "results"
    with registered(scripted, "scripted"):
        assert run_campaign(
            LoadedFile("t.toml", (scripted.experiment(doc),), ()),
            CampaignOptions(out_dir=out, in_process=True, quiet=True),
        )
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    energy = json.loads((run_dir / "exp" / "cycle-001.json").read_text())["energy"]
    assert energy["total_includes"] == ["gpu 0 (scripted)", "cpu all (codecarbon)", "dram all (codecarbon)"]
    by = {d["component"]: d for d in energy["devices"]}
    assert by["dram"]["method"] == "estimate" and by["dram"]["reason"]
    assert by["dram"]["idle_power_w"] is not None  # the idle baseline covers CodeCarbon's parts too
    assert energy["method"] in ("mixed: counter, estimate", "counter")
    assert energy["components"]["dram"]["method"] == "estimate"
    assert energy["total_j"] == pytest.approx(sum(d["energy_j"] for d in energy["devices"]))
    env = json.loads((run_dir / "exp" / "environment.json").read_text())
    assert {r["meter"] for r in env["gpus"]} == {"scripted", "codecarbon"}

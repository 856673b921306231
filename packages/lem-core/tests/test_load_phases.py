"""Load phases (lem.phases): a backend's ``with phases("build"):`` gets its own meter window, apart from the load.

The experiments run the scripted backend (lem.testing.scripted) through the
real campaign runner; a small plugin here wraps its ``load_model`` in a
phase. The meters are scripted (no GPU here) and, like the NVML meter, refuse
a second ``start()`` while a window is open, so a nested window would fail.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

import lem.testing.scripted as scripted
from lem import hookimpl
from lem.configfile.loading import deep_merge
from lem.phases import LoadPhases, merge_windows
from lem.run.meters import CompositeMeter
from lem.testing import ScriptedRunner, registered
from lem.types import DeviceEnergy, EnergyWindow


class StrictMeter:
    """Scripted windows ``(duration s, joules)`` in order; ``start()`` while open raises, as NVML's does."""

    def __init__(self, windows: list[tuple[float, float]], name: str = "strict", component: str = "gpu") -> None:
        self.name, self.component = name, component
        self.windows = list(windows)
        self.open = False
        self.starts = 0

    def start(self) -> None:
        if self.open:
            raise RuntimeError("start() while a window is open")
        self.open = True
        self.starts += 1

    def stop(self) -> EnergyWindow:
        assert self.open, "stop() without start()"
        self.open = False
        dur, joules = self.windows.pop(0)
        dev = DeviceEnergy(0, "GPU-strict", joules, "counter", None, joules / dur, joules / dur, self.component)
        return EnergyWindow(dur, (dev,), ({"t_s": 0.0, "device": 0, "power_w": joules / dur},))

    def environment(self) -> list[dict[str, Any]]:
        return [{"index": 0, "name": "Strict GPU", "uuid": "GPU-strict"}]

    def close(self) -> None:
        pass


class StrictMeterPlugin:
    @hookimpl
    def measure_energy(self, meter: str) -> StrictMeter | None:
        if meter != "strict":
            return None
        # load before the build 0.1 s / 10 J; build 2 s / 600 J; load after it 0.4 s / 40 J;
        # idle 1 s / 100 J; two cycles of 4 s / 1000 J.
        return StrictMeter([(0.1, 10.0), (2.0, 600.0), (0.4, 40.0), (1.0, 100.0), (4.0, 1000.0), (4.0, 1000.0)])


class BuildingBackend:
    """The scripted backend, with a "build" phase of ``BUILD_S`` seconds before it loads."""

    BUILD_S = 0.05

    @hookimpl
    def load_model(self, backend: str, config: Any, phases: Any) -> Any:
        if backend != "scripted":
            return None
        with phases("build"):
            time.sleep(self.BUILD_S)
        return scripted.load_model(backend=backend, config=config)


BASE = {
    "dataset": {"num_prompts": 2, "input_length": 8},
    "generation": {"max_output_tokens": 2},
    "measurement": {"cycles": 2, "idle_seconds": 0.01, "energy_meter": "strict", "warmup_requests": 1},
    "scripted": {"ttft_ms": 1.0, "itl_ms": 1.0, "sleep": False, "load_ms": 20.0},
}


def test_a_build_phase_is_metered_apart_from_the_load(run_scripted: ScriptedRunner) -> None:
    with registered(StrictMeterPlugin(), "strict-meter"), registered(BuildingBackend(), "building"):
        exp_dir = run_scripted(BASE).experiment_dir()
    setup = json.loads((exp_dir / "setup.json").read_text())
    load = setup["load"]
    build = load["phases"]["build"]
    assert build["energy_window"]["devices"][0]["energy_j"] == 600.0
    assert build["energy_window"]["duration_s"] == 2.0
    assert build["duration_s"] >= BuildingBackend.BUILD_S
    # The load's own figures: its two segments added up, the build left out.
    assert load["energy_window"]["devices"][0]["energy_j"] == pytest.approx(50.0)
    assert load["energy_window"]["duration_s"] == pytest.approx(0.5)
    assert load["energy_window"]["devices"][0]["mean_power_w"] == pytest.approx(100.0)
    assert 0.02 <= load["duration_s"] < build["duration_s"] + 0.02 + 1.0
    summary = json.loads((exp_dir / "summary.json").read_text())
    assert summary["load"]["phases"]["build"]["energy_window"]["devices"][0]["energy_j"] == 600.0
    # The idle window and the cycles come after: the phase did not shift the meter's windows.
    assert setup["idle"]["window"]["devices"][0]["energy_j"] == 100.0


def test_a_backend_without_phases_reports_none(run_scripted: ScriptedRunner) -> None:
    with registered(StrictMeterPlugin(), "strict-meter"):
        exp_dir = run_scripted(BASE).experiment_dir()
    load = json.loads((exp_dir / "setup.json").read_text())["load"]
    assert load["phases"] == {}
    assert load["energy_window"]["devices"][0]["energy_j"] == 10.0  # the first scripted window: one segment


def test_without_a_meter_the_phase_has_its_time_and_a_null_energy_with_the_reason(run_scripted: ScriptedRunner) -> None:
    with registered(BuildingBackend(), "building"):
        exp_dir = run_scripted(deep_merge(BASE, {"measurement": {"energy_meter": "none"}})).experiment_dir()
    build = json.loads((exp_dir / "setup.json").read_text())["load"]["phases"]["build"]
    assert build["energy_window"] is None and "energy metering is off" in build["energy_reason"]
    assert build["duration_s"] >= BuildingBackend.BUILD_S


def test_the_report_shows_the_phase(run_scripted: ScriptedRunner) -> None:
    from lem.results.report import render
    from lem.results.rundata import read_run

    with registered(StrictMeterPlugin(), "strict-meter"), registered(BuildingBackend(), "building"):
        exp_dir = run_scripted(BASE).experiment_dir()
    html = render(read_run(exp_dir.parent))[0]
    assert "load phase: build" in html and "600 J" in html


def test_phases_split_a_combination_of_meters() -> None:
    gpu = StrictMeter([(0.1, 1.0), (1.0, 300.0), (0.2, 2.0)], name="gpu")
    cpu = StrictMeter([(0.1, 0.5), (1.0, 50.0), (0.2, 1.0)], name="cpu", component="cpu")
    load = LoadPhases(CompositeMeter([gpu, cpu]))
    load.open()
    with load("build"):
        assert gpu.starts == cpu.starts == 2  # the load's window closed, the phase's opened
        time.sleep(0.01)
    load.close()
    assert gpu.starts == cpu.starts == 3 and not gpu.open and not cpu.open
    build = load.phases["build"].window
    assert build is not None and {d.component: d.energy_j for d in build.devices} == {"gpu": 300.0, "cpu": 50.0}
    window = load.window
    assert window is not None and {d.component: d.energy_j for d in window.devices} == pytest.approx(
        {"gpu": 3.0, "cpu": 1.5}
    )


def test_a_failing_phase_still_closes_its_window_and_the_load_goes_on_metered() -> None:
    meter = StrictMeter([(0.1, 1.0), (1.0, 10.0), (0.1, 1.0)])
    load = LoadPhases(meter)
    load.open()
    with pytest.raises(ValueError, match="build failed"), load("build"):
        raise ValueError("build failed")
    assert meter.open  # the load's second segment
    load.close()
    assert load.phases["build"].window is not None and not meter.open


def test_phases_do_not_nest_and_a_name_is_used_once() -> None:
    load = LoadPhases(None)
    load.open()
    with pytest.raises(RuntimeError, match="do not nest"), load("build"), load("convert"):
        pass
    with pytest.raises(RuntimeError, match="reported twice"), load("build"):
        pass
    load.close()


def test_merge_windows_adds_energy_and_keeps_unknown_unknown() -> None:
    a = EnergyWindow(1.0, (DeviceEnergy(0, "u", 10.0, "counter", None, 10.0, 20.0),), ({"t_s": 0.5, "device": 0},))
    b = EnergyWindow(3.0, (DeviceEnergy(0, "u", 30.0, "counter", None, 10.0, 40.0),), ({"t_s": 0.5, "device": 0},))
    merged = merge_windows([(0, a), (2_000_000_000, b)])
    assert merged is not None
    (d,) = merged.devices
    assert (merged.duration_s, d.energy_j, d.mean_power_w, d.peak_power_w) == (4.0, 40.0, 10.0, 40.0)
    assert [row["t_s"] for row in merged.timeline] == [0.5, 2.5]
    unknown = EnergyWindow(1.0, (DeviceEnergy(0, "u", None, None, "counter reset"),))
    merged = merge_windows([(0, a), (1, unknown)])
    assert merged is not None and merged.devices[0].energy_j is None
    assert merged.devices[0].reason == "counter reset" and merged.devices[0].mean_power_w is None
    assert merge_windows([]) is None

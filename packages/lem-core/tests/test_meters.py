"""Several meters at once (lem.run.meters): per-component figures, one total, nothing counted twice.

The meters here are the scripted GPU meter of lem.testing and small in-test
meters for a CPU and for a meter that reads the GPU as well (CodeCarbon's
shape): no energy hardware is involved, the composite logic is what is tested.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import lem.testing.scripted as scripted
from lem import hookimpl
from lem.config import MeasurementConfig
from lem.configfile.loading import converter
from lem.errors import MeterUnavailable
from lem.run.meters import CompositeMeter, choose, combine, open_meters
from lem.testing import ScriptedRunner, registered
from lem.types import ALL_DEVICES, DeviceEnergy, EnergyWindow


class ConstantMeter:
    """A meter whose figures are a fixed power per component (for the composite's arithmetic)."""

    def __init__(self, name: str, figures: Sequence[tuple[str, int, float, str]]) -> None:
        self.name = name
        self.figures = figures  # (component, device, watts, method)
        self.closed = False
        self._t0 = 0.0

    def start(self) -> None:
        self._t0 = time.monotonic()

    def stop(self) -> EnergyWindow:
        dur = time.monotonic() - self._t0
        devices = tuple(
            DeviceEnergy(dev, None, w * dur, method, "a constant" if method == "estimate" else None, w, w, component=c)
            for c, dev, w, method in self.figures
        )
        rows = tuple({"t_s": dur, "device": dev, "component": c, "power_w": w} for c, dev, w, _ in self.figures)
        return EnergyWindow(duration_s=dur, devices=devices, timeline=rows, warnings=(f"{self.name} note",))

    def environment(self) -> list[dict[str, Any]]:
        return [{"device": dev, "component": c} for c, dev, _, _ in self.figures]

    def close(self) -> None:
        self.closed = True


class MeterPlugin:
    """A throwaway meter plugin: ``cpuish`` reads a CPU socket, ``broad`` reads everything, ``dead`` cannot work."""

    def __init__(self) -> None:
        self.opened: list[ConstantMeter] = []

    @hookimpl
    def measure_energy(self, meter: str, devices: Sequence[int], config: Any) -> ConstantMeter | None:
        if meter == "dead":
            raise MeterUnavailable("no such hardware on this test machine")
        figures = {
            "cpuish": [("cpu", 0, 50.0, "counter"), ("dram", 0, 5.0, "counter")],
            "broad": [("cpu", ALL_DEVICES, 40.0, "estimate"), ("gpu", ALL_DEVICES, 90.0, "counter")],
        }.get(meter)
        if figures is None:
            return None
        opened = ConstantMeter(meter, figures)
        self.opened.append(opened)
        return opened


@pytest.fixture
def plugin(scripted_backend: ModuleType) -> Iterator[MeterPlugin]:
    p = MeterPlugin()
    with registered(p, "test-meters"):
        yield p


def _window(name: str, figures: Sequence[tuple[str, int, float, str]]) -> EnergyWindow:
    return EnergyWindow(
        duration_s=2.0,
        devices=tuple(DeviceEnergy(d, None, j, m, component=c) for c, d, j, m in figures),  # type: ignore[arg-type]
    )


def test_a_component_read_by_two_meters_is_counted_once_from_the_better_reading() -> None:
    nvml = _window("nvml", [("gpu", 0, 400.0, "counter"), ("gpu", 1, 420.0, "counter")])
    cc = _window("codecarbon", [("cpu", ALL_DEVICES, 30.0, "estimate"), ("gpu", ALL_DEVICES, 800.0, "counter")])
    rapl = _window("rapl", [("cpu", 0, 60.0, "counter"), ("dram", 0, 8.0, "counter")])
    # CodeCarbon listed first still loses the GPU: a per-device counter beats a total over all GPUs,
    # and its CPU estimate loses to RAPL's counter.
    windows = [("codecarbon", cc), ("nvml", nvml), ("rapl", rapl)]
    chosen = choose(windows)
    assert chosen == {"gpu": "nvml", "cpu": "rapl", "dram": "rapl"}
    out = combine(windows, chosen)
    assert [(d.meter, d.component, d.device) for d in out.devices] == [
        ("nvml", "gpu", 0),
        ("nvml", "gpu", 1),
        ("rapl", "cpu", 0),
        ("rapl", "dram", 0),
    ]
    assert out.total_j == pytest.approx(400 + 420 + 60 + 8)
    left_out = [w for w in out.warnings if w.startswith("codecarbon:")]
    assert len(left_out) == 2
    assert any("gpu figure (counter) is left out of the total: nvml reads the gpu too" in w for w in left_out)
    assert any("cpu figure (estimate) is left out of the total: rapl" in w for w in left_out)


def test_a_component_only_one_meter_reads_is_kept_even_as_an_estimate() -> None:
    nvml = _window("nvml", [("gpu", 0, 400.0, "counter")])
    cc = _window("codecarbon", [("cpu", ALL_DEVICES, 30.0, "estimate"), ("gpu", ALL_DEVICES, 800.0, "counter")])
    out = combine([("nvml", nvml), ("codecarbon", cc)], choose([("nvml", nvml), ("codecarbon", cc)]))
    assert [(d.meter, d.component, d.method) for d in out.devices] == [
        ("nvml", "gpu", "counter"),
        ("codecarbon", "cpu", "estimate"),
    ]


def test_two_meters_in_a_run_give_per_component_idle_and_a_labelled_total(
    run_scripted: ScriptedRunner, plugin: MeterPlugin
) -> None:
    doc = {
        "dataset": {"num_prompts": 4, "input_length": 8},
        "generation": {"max_output_tokens": 3},
        "measurement": {
            "cycles": 1,
            "idle_seconds": 0.05,
            "energy_meter": ["scripted", "cpuish"],
            "warmup_requests": 0,
        },
        "scripted": {"ttft_ms": 20.0, "itl_ms": 10.0, "idle_w": 100.0, "busy_w": 300.0},
    }
    run_dir = run_scripted(doc).run_dir
    cycle = json.loads((run_dir / "exp" / "cycle-001.json").read_text())
    energy = cycle["energy"]
    by = {(d["component"], d["device"]): d for d in energy["devices"]}
    assert set(by) == {("gpu", 0), ("cpu", 0), ("dram", 0)}
    # GPU 0 and CPU socket 0 keep their own idle power: the CPU's is its constant 50 W, not the GPU's 100 W.
    assert by[("cpu", 0)]["idle_power_w"] == pytest.approx(50.0, rel=0.02)
    assert by[("dram", 0)]["idle_power_w"] == pytest.approx(5.0, rel=0.02)
    assert by[("gpu", 0)]["idle_power_w"] == pytest.approx(100.0, rel=0.05)
    assert energy["total_includes"] == ["gpu 0 (scripted)", "cpu 0 (cpuish)", "dram 0 (cpuish)"]
    assert set(energy["components"]) == {"gpu", "cpu", "dram"}
    assert energy["total_j"] == pytest.approx(sum(d["energy_j"] for d in energy["devices"]))
    assert energy["idle_power_w"] == pytest.approx(155.0, rel=0.05)
    assert "cpuish: cpuish note" in cycle["warnings"] or any("cpuish note" in w for w in cycle["warnings"])
    setup = json.loads((run_dir / "exp" / "setup.json").read_text())
    assert setup["meter"] == "scripted+cpuish"
    env = json.loads((run_dir / "exp" / "environment.json").read_text())
    assert {row["meter"] for row in env["gpus"]} == {"scripted", "cpuish"}
    assert all(m.closed for m in plugin.opened)


def test_every_named_meter_must_open_and_the_opened_ones_are_closed(plugin: MeterPlugin) -> None:
    config = scripted.experiment({"measurement": {"energy_meter": ["cpuish", "dead"]}}).config
    meter, reason = open_meters(config.measurement.energy_meters, (0,), config)
    assert meter is None
    assert reason is not None and "'dead' is unavailable: no such hardware on this test machine" in reason
    assert "remove it from measurement.energy_meter" in reason
    assert [m.closed for m in plugin.opened] == [True]


def test_composite_start_and_stop_nest_and_close_closes_all(plugin: MeterPlugin) -> None:
    config = scripted.experiment({"measurement": {"energy_meter": ["cpuish", "broad"]}}).config
    meter, _ = open_meters(config.measurement.energy_meters, (0,), config)
    assert isinstance(meter, CompositeMeter)
    meter.start()
    time.sleep(0.02)
    window = meter.stop()
    assert {(d.meter, d.component) for d in window.devices} == {("cpuish", "cpu"), ("cpuish", "dram"), ("broad", "gpu")}
    assert window.duration_s >= 0.02
    meter.close()
    assert all(m.closed for m in plugin.opened)


def test_energy_meter_takes_a_name_or_a_list_of_names() -> None:
    one = converter.structure({"energy_meter": "nvml"}, MeasurementConfig)
    many = converter.structure({"energy_meter": ["nvml", "rapl"]}, MeasurementConfig)
    assert one.energy_meters == ("nvml",)
    assert many.energy_meter == ("nvml", "rapl") and many.energy_meters == ("nvml", "rapl")


def test_a_list_with_a_non_name_is_a_config_error_at_its_key(installed: None, tmp_path: Path) -> None:
    from lem.configfile.loading import load
    from lem.errors import ConfigError

    path = tmp_path / "exp.toml"
    path.write_text('model = "m"\nbackend = "scripted"\n[measurement]\nenergy_meter = ["scripted", 3]\n')
    with pytest.raises(ConfigError) as info:
        load(path)
    (line,) = [p.format() for p in info.value.problems]
    assert "measurement.energy_meter" in line and "expected a name or a list of names" in line


@pytest.fixture
def installed(plugin: MeterPlugin) -> Iterator[None]:
    """The scripted backend and the test meters count as installed plugins, so only meter names are checked."""
    from lem import plugins

    plugins._dists.update({"scripted": "lem-core", "test-meters": "lem-core"})
    try:
        yield
    finally:
        plugins._dists.pop("scripted", None)
        plugins._dists.pop("test-meters", None)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('["auto", "test-meters"]', "'auto' cannot be combined with other meters"),
        ('["test-meters", "test-meters"]', "names 'test-meters' twice"),
        ("[]", "is an empty list"),
        ('["test-meters", "joulemeter"]', "'joulemeter' is not an installed energy meter"),
    ],
)
def test_bad_meter_lists_are_config_errors(installed: None, tmp_path: Path, value: str, message: str) -> None:
    from lem.configfile.loading import load
    from lem.errors import ConfigError

    path = tmp_path / "exp.toml"
    path.write_text(f'model = "m"\nbackend = "scripted"\n[measurement]\nenergy_meter = {value}\n')
    with pytest.raises(ConfigError) as info:
        load(path)
    lines = [p.format() for p in info.value.problems]
    assert any("measurement.energy_meter" in line and message in line for line in lines), lines


def test_a_list_of_installed_meters_is_valid(installed: None, tmp_path: Path) -> None:
    from lem.configfile.loading import load

    path = tmp_path / "exp.toml"
    path.write_text('model = "m"\nbackend = "scripted"\n[measurement]\nenergy_meter = ["scripted", "test-meters"]\n')
    (exp,) = load(path).experiments
    assert exp.config.measurement.energy_meters == ("scripted", "test-meters")

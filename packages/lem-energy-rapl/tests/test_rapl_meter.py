"""The RAPL meter against a fake powercap tree (this machine has no RAPL: see fake_powercap.py).

Zones are found as the kernel lays them out, counters are read at the window
edges and by the sampler in between, wraps are added back, and a refused
read says what to do.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from fake_powercap import FakePowercap

from lem.errors import MeterUnavailable
from lem_energy_rapl import sysfs
from lem_energy_rapl.meter import RaplMeter, unwrap
from lem_energy_rapl.plugin import open_meter
from lem_energy_rapl.sysfs import discover, powercap_root


def test_zones_are_found_per_socket_and_only_package_and_dram_count(powercap: FakePowercap) -> None:
    powercap.two_socket_server()
    zones = discover(powercap_root())
    found = [(z.zone, z.name, z.socket, z.component) for z in zones]
    assert found == [
        ("intel-rapl:0", "package-0", 0, "cpu"),
        ("intel-rapl:0:0", "core", 0, None),
        ("intel-rapl:0:1", "dram", 0, "dram"),
        ("intel-rapl:1", "package-1", 1, "cpu"),
        ("intel-rapl:1:0", "core", 1, None),
        ("intel-rapl:1:1", "dram", 1, "dram"),
        ("intel-rapl:2", "psys", 2, None),
    ]  # intel-rapl-mmio:0 is the same package counter again: never read
    assert zones[0].max_power_w == pytest.approx(350.0)


def test_amd_rapl_zones_are_read_the_same_way(powercap: FakePowercap) -> None:
    powercap.zone("amd-rapl:0", "package-0", 10)
    assert [(z.zone, z.component) for z in discover(powercap_root())] == [("amd-rapl:0", "cpu")]


def test_window_energy_is_the_counter_difference_per_zone(powercap: FakePowercap) -> None:
    powercap.two_socket_server()
    meter = open_meter(sampling_interval_ms=5)
    meter.start()
    powercap.set("intel-rapl:0", 1_000_000 + 30_000_000)  # 30 J on package 0
    powercap.set("intel-rapl:1", 2_000_000 + 20_000_000)
    powercap.set("intel-rapl:0:1", 200_000 + 4_000_000)  # 4 J on socket 0's DRAM
    powercap.set("intel-rapl:1:1", 200_000 + 3_000_000)
    powercap.set("intel-rapl:0:0", 999_999_999)  # core lies inside the package: never added
    time.sleep(0.05)
    window = meter.stop()
    meter.close()
    got = {(d.component, d.device): (d.energy_j, d.method) for d in window.devices}
    assert got == {
        ("cpu", 0): (pytest.approx(30.0), "counter"),
        ("dram", 0): (pytest.approx(4.0), "counter"),
        ("cpu", 1): (pytest.approx(20.0), "counter"),
        ("dram", 1): (pytest.approx(3.0), "counter"),
    }
    assert window.total_j == pytest.approx(57.0)
    assert window.duration_s >= 0.05
    assert all(d.mean_power_w == pytest.approx(d.energy_j / window.duration_s) for d in window.devices)
    # The timeline has power per domain over time, and it integrates back to the energy.
    rows = [r for r in window.timeline if r["component"] == "cpu" and r["device"] == 0]
    assert {r["domain"] for r in rows} == {"package-0"}
    assert len(rows) >= 2
    assert max(r["power_w"] for r in rows) == pytest.approx(window.devices[0].peak_power_w)
    assert window.warnings == ()


def test_a_wrap_inside_a_window_is_added_back(powercap: FakePowercap) -> None:
    top = 1_000_000_000  # a 1 kJ range, to make the wrap easy to see
    powercap.zone("intel-rapl:0", "package-0", top - 1_000_000, max_range_uj=top)
    meter = open_meter(sampling_interval_ms=0)
    meter.start()
    powercap.set("intel-rapl:0", 2_000_000)  # past the top: 1 J before the wrap, 2 J after
    (energy,) = meter.stop().devices
    assert energy.energy_j == pytest.approx(3.0)
    assert unwrap(top - 5, 3, top) == 8


def test_the_sampler_sees_every_wrap_of_a_long_window(powercap: FakePowercap) -> None:
    """A counter that wraps twice between the edges: the edges alone would see 0.4 of a range."""
    top = 1_000_000_000
    powercap.zone("intel-rapl:0", "package-0", 0, max_range_uj=top)
    meter = open_meter(sampling_interval_ms=5)
    meter.start()
    for value in (600_000_000, 200_000_000, 800_000_000, 400_000_000):  # +0.6 range each step, wrapping twice
        time.sleep(0.05)
        powercap.set("intel-rapl:0", value)
    time.sleep(0.05)
    window = meter.stop()
    (energy,) = window.devices
    assert energy.energy_j == pytest.approx(2400.0)  # 4 × 600 J
    assert any("wrapped 2 time(s)" in w for w in window.warnings)


def test_readings_further_apart_than_the_wrap_period_are_flagged(powercap: FakePowercap) -> None:
    # A 1 J range at 1 kW wraps every millisecond: with edge readings only, a wrap could hide.
    powercap.zone("intel-rapl:0", "package-0", 0, max_range_uj=1_000_000, max_power_uw=1_000_000_000)
    meter = open_meter(sampling_interval_ms=0)
    assert any("does not read RAPL often enough" in n for n in meter._notes)
    meter.start()
    time.sleep(0.02)
    window = meter.stop()
    assert any("may have wrapped more than once" in w for w in window.warnings)


def test_a_read_that_fails_mid_window_gives_null_energy_with_the_reason(powercap: FakePowercap) -> None:
    powercap.zone("intel-rapl:0", "package-0", 0)
    meter = open_meter(sampling_interval_ms=0)
    meter.start()
    (powercap.root / "intel-rapl:0" / "energy_uj").write_text("garbage\n")
    (energy,) = meter.stop().devices
    assert energy.energy_j is None and energy.method is None
    assert "package-0" in str(energy.reason) and "window's end" in str(energy.reason)


def test_a_refused_read_says_what_to_do(powercap: FakePowercap, monkeypatch: pytest.MonkeyPatch) -> None:
    """energy_uj is mode 0400 since CVE-2020-8694. Not root: the file is really made unreadable;
    as root (who reads it anyway) the refusal the kernel gives other users is imitated."""
    counter = powercap.zone("intel-rapl:0", "package-0", 5) / "energy_uj"
    if os.geteuid() != 0:
        counter.chmod(0)
    else:
        real_open = open

        def refusing_open(path: object, *args: object, **kwargs: object) -> object:
            if Path(str(path)) == counter:
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(path, *args, **kwargs)  # type: ignore[call-overload]

        monkeypatch.setattr(sysfs, "open", refusing_open, raising=False)
    with pytest.raises(MeterUnavailable) as info:
        open_meter(sampling_interval_ms=100)
    message = str(info.value)
    assert str(counter) in message and "permission denied" in message
    assert "CVE-2020-8694" in message and "run lem as root" in message and "chmod a+r" in message
    assert "udev" in message


def test_no_rapl_here_is_a_clear_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(sysfs.ROOT_ENV, str(tmp_path / "nothing"))
    with pytest.raises(MeterUnavailable, match=r"no RAPL package or dram zone under .*nothing"):
        open_meter(sampling_interval_ms=100)


def test_environment_lists_every_zone_with_the_cpu_model(powercap: FakePowercap) -> None:
    powercap.two_socket_server()
    meter = open_meter(sampling_interval_ms=100)
    rows = meter.environment()
    meter.close()
    assert [(r["domain"], r["counted"]) for r in rows][:3] == [("package-0", True), ("core", False), ("dram", True)]
    assert rows[0]["wrap_period_s"] == pytest.approx(262143.328850 / 350, abs=0.1)
    assert rows[0]["energy_method"] == "counter" and rows[1]["energy_method"] is None
    assert "cpu_model" in rows[0]


def test_start_stop_misuse_is_an_error(powercap: FakePowercap) -> None:
    powercap.zone("intel-rapl:0", "package-0", 0)
    meter: RaplMeter = open_meter(sampling_interval_ms=10)
    with pytest.raises(RuntimeError, match="stop\\(\\) without start\\(\\)"):
        meter.stop()
    meter.start()
    with pytest.raises(RuntimeError, match="while a window is open"):
        meter.start()
    meter.close()  # stops the sampler of the open window
    assert not [t for t in threading.enumerate() if t.name == "lem-rapl-sampler"]

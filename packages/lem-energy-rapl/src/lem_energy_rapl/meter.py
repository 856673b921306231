"""The RAPL energy meter: counters read at the window edges and on a timeline in between.

Energy of a zone = the sum of the differences between consecutive readings
of its ``energy_uj`` counter, each difference unwrapped: when a reading is
below the one before, the counter passed ``max_energy_range_uj`` and that
range is added back. One difference can hide at most one wrap, so the
sampler thread reads every ``sampling_interval_ms`` (100 ms by default),
far more often than a counter can wrap (a 262 kJ package range wraps in
~17 min at 250 W). Where two readings lie further apart than the shortest
wrap period (the range at the zone's maximum power), the window says that
the counter may have wrapped more than once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from itertools import pairwise
from typing import Any

from lem.types import DeviceEnergy, EnergyWindow
from lem_energy_rapl.sysfs import Zone, cpu_model, read_uj

#: Upper bound of a zone's power when sysfs gives none (a conservative figure for today's largest sockets).
ASSUMED_MAX_POWER_W = 1000.0
Reading = tuple[int, tuple[int | str, ...]]  # (t_ns, one counter value or error text per zone)


def unwrap(before: int, after: int, max_range_uj: int) -> int:
    """µJ between two readings of a counter that wraps at ``max_range_uj`` (one wrap at most)."""
    delta = after - before
    return delta + max_range_uj if delta < 0 else delta


def wrap_period_s(zone: Zone) -> float:
    """The shortest time in which ``zone``'s counter can wrap: its range at its maximum power."""
    power = zone.max_power_w or ASSUMED_MAX_POWER_W
    return zone.max_energy_range_uj / 1e6 / power


class RaplMeter:
    """An open RAPL meter on every package and DRAM zone (implements :class:`lem.types.EnergyMeter`)."""

    name = "rapl"

    def __init__(self, zones: Sequence[Zone], sampling_interval_s: float, notes: Sequence[str] = ()) -> None:
        self.zones = [z for z in zones if z.component is not None]
        self.others = [z for z in zones if z.component is None]
        self._interval_s = sampling_interval_s
        self._notes = list(notes)
        self._readings: list[Reading] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0_ns: int | None = None
        self._closed = False

    def _read(self) -> Reading:
        values: list[int | str] = []
        for zone in self.zones:
            try:
                values.append(read_uj(zone))
            except (OSError, ValueError) as exc:  # a permission error was ruled out when the meter opened
                values.append(f"{type(exc).__name__}: {exc}")
        return time.monotonic_ns(), tuple(values)

    def _sample(self) -> None:
        reading = self._read()
        with self._lock:
            self._readings.append(reading)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._sample()

    def start(self) -> None:
        """Open a window: read every counter now, then start the sampler thread."""
        if self._closed:
            raise RuntimeError("RAPL meter: start() after close()")
        if self._t0_ns is not None:
            raise RuntimeError("RAPL meter: start() while a window is open; call stop() first")
        first = self._read()
        self._t0_ns = first[0]
        self._readings = [first]
        self._stop.clear()
        if self._interval_s > 0:
            self._thread = threading.Thread(target=self._run, name="lem-rapl-sampler", daemon=True)
            self._thread.start()

    def _join(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def stop(self) -> EnergyWindow:
        """Close the window: stop the sampler, read every counter, and add up each zone's unwrapped steps."""
        if self._t0_ns is None:
            raise RuntimeError("RAPL meter: stop() without start()")
        self._join()
        self._sample()
        t0, readings = self._t0_ns, list(self._readings)
        self._t0_ns = None
        duration = (readings[-1][0] - t0) / 1e9
        devices, timeline, warnings = [], [], list(self._notes)
        for i, zone in enumerate(self.zones):
            energy, rows, notes = self._zone_energy(zone, [(t, v[i]) for t, v in readings], t0, duration)
            devices.append(energy)
            timeline.extend(rows)
            warnings.extend(notes)
        timeline.sort(key=lambda r: r["t_s"])
        return EnergyWindow(
            duration_s=duration, devices=tuple(devices), timeline=tuple(timeline), warnings=tuple(warnings)
        )

    def _zone_energy(
        self, zone: Zone, series: Sequence[tuple[int, int | str]], t0: int, duration: float
    ) -> tuple[DeviceEnergy, list[dict[str, Any]], list[str]]:
        """One zone's energy, its power timeline and warnings, from its readings in the window."""
        label = f"RAPL {zone.name} ({zone.zone})"
        component = zone.component or zone.name

        def result(energy: float | None, reason: str | None = None, peak: float | None = None) -> DeviceEnergy:
            mean = energy / duration if energy is not None and duration > 0 else None
            method = "counter" if energy is not None else None
            return DeviceEnergy(zone.socket, None, energy, method, reason, mean, peak, component=component)

        for edge, (_, value) in (("start", series[0]), ("end", series[-1])):
            if isinstance(value, str):
                return result(None, f"{label}: reading the counter at the window's {edge} failed: {value}"), [], []
        good = [(t, v) for t, v in series if isinstance(v, int)]
        warnings = []
        if len(good) < len(series):
            warnings.append(f"{label}: {len(series) - len(good)} timeline readings failed; the edges are kept")
        total_uj, wraps, longest, rows = 0, 0, 0.0, []
        for (ta, a), (tb, b) in pairwise(good):
            step = unwrap(a, b, zone.max_energy_range_uj)
            wraps += b < a
            total_uj += step
            dt = (tb - ta) / 1e9
            longest = max(longest, dt)
            if dt > 0:
                rows.append(
                    {
                        "t_s": round((tb - t0) / 1e9, 6),
                        "device": zone.socket,
                        "component": component,
                        "domain": zone.name,
                        "power_w": step / 1e6 / dt,
                    }
                )
        period = wrap_period_s(zone)
        if longest > period:
            warnings.append(
                f"{label}: {longest:.0f} s passed between two counter readings, longer than the counter's shortest "
                f"wrap period (~{period:.0f} s: {zone.max_energy_range_uj} µJ at "
                f"{zone.max_power_w or ASSUMED_MAX_POWER_W:.0f} W); it may have wrapped more than once, which "
                "cannot be seen: keep measurement.sampling_interval_ms well below that"
            )
        if wraps:
            warnings.append(f"{label}: the counter wrapped {wraps} time(s) in the window; each wrap was added back")
        peak = max((r["power_w"] for r in rows), default=None)
        return result(total_uj / 1e6, peak=peak), rows, warnings

    def environment(self) -> list[dict[str, Any]]:
        """One row per RAPL zone (the counted ones and those inside them), with the CPU model."""
        model = cpu_model()
        return [
            {
                "device": zone.socket,
                "component": zone.component or zone.name,
                "domain": zone.name,
                "zone": zone.zone,
                "cpu_model": model,
                "max_energy_range_uj": zone.max_energy_range_uj,
                "max_power_w": zone.max_power_w,
                "wrap_period_s": round(wrap_period_s(zone), 1),
                "energy_method": "counter" if zone.component else None,
                "counted": zone.component is not None,
            }
            for zone in sorted([*self.zones, *self.others], key=lambda z: (z.socket, z.zone))
        ]

    def close(self) -> None:
        """Stop the sampler if a window is open."""
        if self._closed:
            return
        self._closed = True
        self._join()
        self._t0_ns = None

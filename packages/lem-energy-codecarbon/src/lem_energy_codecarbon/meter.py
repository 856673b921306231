"""The CodeCarbon meter: one ``OfflineEmissionsTracker`` task per window, its parts labelled measured or estimated.

CodeCarbon sums CPU, RAM and GPU energy, each obtained however the machine
allows. :func:`classify` reads, from the tracker's own hardware objects, how
each part is obtained here (see CodeCarbon's ``core/resource_tracker.py`` and
``external/hardware.py``, version 3.3):

- CPU: ``intel_rapl`` / ``windows_emi`` read RAPL energy counters (measured);
  ``intel_power_gadget`` and Apple ``powermetrics`` sample measured power;
  without those it falls back to ``cpu_load`` mode, a guess from the CPU's
  TDP (its table, or 85 W for a CPU it does not know) and the CPU load, or
  to ``constant`` mode (half the TDP): both are estimates.
- RAM: always a model, a fixed power per memory module guessed from the RAM
  size (or a power the user gives), whatever the load: an estimate (a
  Raspberry Pi's PMIC is the one measured case).
- GPU: NVML's energy counter, or sampled power where a GPU has none.

The first task of a tracker detects the hardware (~1.7 s on the CPU
machine): the meter does that once when it opens, so no window pays for it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import attrs

from lem.errors import MeterUnavailable
from lem.types import ALL_DEVICES, DeviceEnergy, EnergyWindow

J_PER_KWH = 3.6e6


@attrs.frozen
class Part:
    """How CodeCarbon obtains one component's energy on this machine."""

    component: str  # "cpu", "dram", "gpu"
    method: str  # "counter", "power-integration", "estimate"
    how: str  # CodeCarbon's mode, in words
    #: For an estimate, what it rests on (goes to ``DeviceEnergy.reason``).
    basis: str | None = None


def _cpu_part(hw: Any, tracker: Any) -> Part:
    mode = getattr(hw, "_mode", None)
    tdp = getattr(hw, "_tdp", None)
    model = getattr(hw, "_model", None)
    forced = getattr(tracker, "_force_cpu_power", None)
    if mode in ("intel_rapl", "windows_emi"):
        return Part("cpu", "counter", f"CodeCarbon {mode}: RAPL energy counters")
    if mode == "intel_power_gadget":
        return Part("cpu", "power-integration", "CodeCarbon intel_power_gadget: measured CPU power")
    if forced is not None:
        return Part("cpu", "estimate", f"CodeCarbon {mode}", f"CodeCarbon used the given CPU power ({forced} W)")
    if mode == "cpu_load":
        where = (
            "TDP of 85 W, its default for a CPU it does not know"
            if getattr(hw, "_is_generic_tdp", False)
            else (f"TDP of {tdp} W from its table for {model!r}")
        )
        if getattr(hw, "_tracking_mode", "machine") == "process":
            shape = "× this process's share of the CPU time"
        else:
            shape = "× (0.1 + 0.9 × load³) of the machine's CPU load"
        return Part(
            "cpu",
            "estimate",
            "CodeCarbon cpu_load",
            f"CodeCarbon estimate: no CPU energy counter it can read, so CPU power = the {where} {shape}",
        )
    if mode == "constant":
        return Part(
            "cpu", "estimate", "CodeCarbon constant", f"CodeCarbon estimate: CPU power = half its TDP ({tdp} W)"
        )
    return Part("cpu", "estimate", f"CodeCarbon {mode}", f"CodeCarbon CPU mode {mode!r}: not known to lem as measured")


def classify(tracker: Any) -> list[Part]:
    """How each part of ``tracker``'s figure is obtained, from its hardware objects (after hardware setup)."""
    parts = []
    for hw in getattr(tracker, "_hardware", []):
        kind = type(hw).__name__
        if kind == "CPU":
            parts.append(_cpu_part(hw, tracker))
        elif kind == "RAM":
            forced = getattr(hw, "_force_ram_power", None)
            if forced is not None:
                basis = f"CodeCarbon used the given RAM power ({forced} W)"
            else:
                from codecarbon.external.ram import RAM_SLOT_POWER_X86

                size = tracker._conf.get("ram_total_size")
                basis = (
                    f"CodeCarbon estimate: RAM power = {RAM_SLOT_POWER_X86} W per memory module (x86), the modules "
                    f"guessed from {size:.1f} GB of RAM, whatever the load"
                    if isinstance(size, float | int)
                    else "CodeCarbon estimate: RAM power from its per-module model, whatever the load"
                )
            parts.append(Part("dram", "estimate", "CodeCarbon RAM model", basis))
        elif kind == "GPU":
            devices = getattr(getattr(hw, "devices", None), "devices", [])
            fallback = any(getattr(d, "_use_power_fallback", False) for d in devices)
            method = "power-integration" if fallback else "counter"
            parts.append(
                Part("gpu", method, "CodeCarbon pynvml: " + ("sampled power" if fallback else "energy counter"))
            )
        elif kind in ("AppleSiliconChip", "Raspberry"):
            component = {"CPU": "cpu", "GPU": "gpu", "RAM": "dram"}.get(getattr(hw, "chip_part", ""), "cpu")
            parts.append(Part(component, "power-integration", f"CodeCarbon {kind}: measured power"))
    order = ("cpu", "dram", "gpu")
    return sorted(parts, key=lambda p: order.index(p.component))


class CodecarbonMeter:
    """An open CodeCarbon meter (implements :class:`lem.types.EnergyMeter`); one tracker task per window."""

    name = "codecarbon"

    def __init__(self, kwargs: dict[str, Any], co2: bool) -> None:
        from codecarbon import OfflineEmissionsTracker

        # Its INFO/WARNING lines at construction come before log_level applies.
        logging.getLogger("codecarbon").setLevel(logging.ERROR)
        self._kwargs = kwargs
        self._co2 = co2
        began = time.perf_counter()
        self.tracker = OfflineEmissionsTracker(**kwargs)
        # The first task runs CodeCarbon's hardware detection (seconds): do it now, outside any window.
        self.tracker.start_task("lem-hardware-setup")
        warm = self.tracker.stop_task()
        self.setup_s = time.perf_counter() - began
        if warm is None:
            raise MeterUnavailable("CodeCarbon meter: the tracker failed to start (CodeCarbon's log says why)")
        self.parts = classify(self.tracker)
        self._t0_ns: int | None = None
        self._windows = 0
        self._closed = False

    def start(self) -> None:
        """Open a window: start a CodeCarbon task."""
        if self._closed:
            raise RuntimeError("CodeCarbon meter: start() after close()")
        if self._t0_ns is not None:
            raise RuntimeError("CodeCarbon meter: start() while a window is open; call stop() first")
        self._windows += 1
        self._t0_ns = time.monotonic_ns()
        self.tracker.start_task(f"lem-window-{self._windows}")

    def stop(self) -> EnergyWindow:
        """Close the window: stop the task and map its kWh to joules per part, estimates labelled."""
        if self._t0_ns is None:
            raise RuntimeError("CodeCarbon meter: stop() without start()")
        data = self.tracker.stop_task()
        duration = (time.monotonic_ns() - self._t0_ns) / 1e9
        self._t0_ns = None
        return window_from(data, self.parts, duration, self._co2)

    def environment(self) -> list[dict[str, Any]]:
        """One row per part (how CodeCarbon obtains it here), with the tracker's hardware facts."""
        conf = self.tracker._conf
        common = {
            "codecarbon_version": conf.get("codecarbon_version"),
            "cpu_model": conf.get("cpu_model"),
            "cpu_count": conf.get("cpu_count"),
            "ram_total_gb": conf.get("ram_total_size"),
            "gpu_model": conf.get("gpu_model"),
            "gpu_count": conf.get("gpu_count"),
            "country_iso_code": self._kwargs.get("country_iso_code") if self._co2 else None,
            "co2eq": "reported" if self._co2 else "not reported: set [codecarbon] country_iso_code",
            "tracking_mode": self._kwargs.get("tracking_mode", "machine"),
            "setup_s": round(self.setup_s, 3),
        }
        return [
            {
                "device": ALL_DEVICES,
                "component": p.component,
                "energy_method": p.method,
                "how": p.how,
                "estimate_basis": p.basis,
                **common,
            }
            for p in self.parts
        ]

    def close(self) -> None:
        """End an open task; the tracker itself holds no resources once no task runs."""
        if self._closed:
            return
        self._closed = True
        if self._t0_ns is not None:
            self.tracker.stop_task()
            self._t0_ns = None


def window_from(data: Any, parts: Sequence[Part], duration: float, co2: bool) -> EnergyWindow:
    """An :class:`EnergyWindow` from one task's ``EmissionsData`` (kWh, kg) and how each part is obtained."""
    kwh = {"cpu": "cpu_energy", "dram": "ram_energy", "gpu": "gpu_energy"}
    intensity = None  # kg CO2eq per kWh of this window, the same for every part
    if data is not None and co2 and data.energy_consumed > 0:
        intensity = data.emissions / data.energy_consumed
    devices = []
    for part in parts:
        if data is None:
            energy = None
            reason = "CodeCarbon returned no data for this window (its log says why)"
        else:
            value = float(getattr(data, kwh[part.component]))
            energy, reason = value * J_PER_KWH, part.basis
        devices.append(
            DeviceEnergy(
                ALL_DEVICES,
                None,
                energy,
                part.method if energy is not None else None,  # type: ignore[arg-type]
                reason,
                energy / duration if energy is not None and duration > 0 else None,
                None,
                component=part.component,
                co2eq_kg=energy / J_PER_KWH * intensity if energy is not None and intensity is not None else None,
            )
        )
    return EnergyWindow(duration_s=duration, devices=tuple(devices))

"""Metered phases inside loading a model: a TensorRT engine build, a GGUF conversion.

The core meters the whole ``load_model`` call. A backend that does distinct
work while loading (building an engine before it loads it) reports it with
the ``phases`` argument of ``load_model``::

    with phases("build"):
        build_the_engine()

The phase gets its own time and energy (``load.phases.build`` in
``setup.json`` and the summary), and ``load`` itself keeps the rest.

Meters hold one window at a time (the NVML meter refuses a ``start()`` while a
window is open, and so does a combination of meters), so a phase does not
nest a window inside the load window: it splits it. The load window closes
when the phase begins, the phase has its own window, and the load window
reopens when the phase ends; the load's figures are its segments added up
(:func:`merge_windows`). The backend makes sure the phase's device work is
done before its block ends (there is no model yet that the core could
synchronize).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from typing import Any

import attrs

from lem.types import DeviceEnergy, EnergyMeter, EnergyWindow


@attrs.define
class Segment:
    """One metered stretch: ``t0``/``t1`` by ``time.monotonic_ns`` just inside the meter's edges."""

    t0: int
    t1: int = 0
    window: EnergyWindow | None = None


@attrs.define
class LoadPhases:
    """The load window of one experiment, split by the phases a backend reports.

    Call :meth:`open` before ``load_model`` and :meth:`close` after it; pass the
    object itself as ``phases`` (calling it with a name gives a ``with`` block).
    """

    meter: EnergyMeter | None
    segments: list[Segment] = attrs.field(factory=list)
    phases: dict[str, Segment] = attrs.field(factory=dict)
    active: str | None = None

    def open(self) -> None:
        """Start a load segment."""
        if self.meter is not None:
            self.meter.start()
        self.segments.append(Segment(time.monotonic_ns()))

    def close(self) -> None:
        """End the current load segment."""
        segment = self.segments[-1]
        segment.t1 = time.monotonic_ns()
        if self.meter is not None:
            segment.window = self.meter.stop()

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        """Meter the block as phase ``name``, apart from the rest of the load."""
        if self.active is not None:
            raise RuntimeError(f"load phase {name!r} inside phase {self.active!r}: phases do not nest")
        if name in self.phases:
            raise RuntimeError(f"load phase {name!r} reported twice")
        self.close()
        self.active = name
        phase = Segment(0)
        if self.meter is not None:
            self.meter.start()
        phase.t0 = time.monotonic_ns()
        try:
            yield
        finally:
            phase.t1 = time.monotonic_ns()
            if self.meter is not None:
                phase.window = self.meter.stop()
            self.phases[name] = phase
            self.active = None
            self.open()

    @property
    def duration_s(self) -> float:
        """The load's own time: its segments, without the phases."""
        return sum(s.t1 - s.t0 for s in self.segments) / 1e9

    @property
    def window(self) -> EnergyWindow | None:
        """The load's own energy: its segments' windows added up (``None`` without a meter)."""
        return merge_windows([(s.t0, s.window) for s in self.segments if s.window is not None])


def unmetered() -> LoadPhases:
    """A ``phases`` argument for calling ``load_model`` outside a run (tests, benchmarks): times, no meter."""
    phases = LoadPhases(None)
    phases.open()
    return phases


def _sum(values: Sequence[float | None]) -> float | None:
    return None if any(v is None for v in values) else sum(v for v in values if v is not None)


def merge_windows(parts: Sequence[tuple[int, EnergyWindow]]) -> EnergyWindow | None:
    """One window from consecutive windows of one meter (``(t0_ns, window)`` in order).

    Energies add up per device (unknown if unknown in any part, with that
    part's reason), durations add up, mean power is energy over the summed
    duration, peak power the highest; the timeline's ``t_s`` counts from the
    first part's start.
    """
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0][1]
    first_t0 = parts[0][0]
    duration = sum(w.duration_s for _, w in parts)
    keys: dict[tuple[Any, ...], list[DeviceEnergy]] = {}
    for _, window in parts:
        for d in window.devices:
            keys.setdefault((d.device, d.uuid, d.component, d.meter), []).append(d)
    devices = []
    for figures in keys.values():
        energy = _sum([d.energy_j for d in figures]) if len(figures) == len(parts) else None
        reason = next((d.reason for d in figures if d.reason), None)
        if len(figures) != len(parts):
            reason = "the device was not measured in every part of the load window"
        peaks = [d.peak_power_w for d in figures if d.peak_power_w is not None]
        co2 = [d.co2eq_kg for d in figures]
        devices.append(
            attrs.evolve(
                figures[0],
                energy_j=energy,
                reason=reason,
                mean_power_w=None if energy is None or duration <= 0 else energy / duration,
                peak_power_w=max(peaks) if peaks else None,
                co2eq_kg=_sum(co2) if energy is not None else None,
            )
        )
    timeline = []
    warnings: list[str] = []
    for t0, window in parts:
        shift = (t0 - first_t0) / 1e9
        timeline += [{**row, "t_s": float(row.get("t_s", 0.0)) + shift} for row in window.timeline]
        warnings += [w for w in window.warnings if w not in warnings]
    methods_seen = {d.method for _, w in parts for d in w.devices}
    if len(methods_seen) > 1:
        warnings.append(
            "the parts of the load window were measured by different methods: "
            + ", ".join(sorted(str(m) for m in methods_seen))
        )
    return EnergyWindow(duration_s=duration, devices=tuple(devices), timeline=tuple(timeline), warnings=tuple(warnings))

"""The ``rapl`` lem plugin: ``measure_energy`` and ``validate_config`` for CPU package and DRAM energy.

RAPL never answers ``energy_meter = "auto"``: auto picks one meter, and that
one should be the GPU's. Name it, alone or with others
(``energy_meter = ["nvml", "rapl"]``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from lem import hookimpl
from lem.errors import MeterUnavailable
from lem.types import Problem, warning
from lem_energy_rapl.meter import RaplMeter, wrap_period_s
from lem_energy_rapl.sysfs import discover, powercap_root, read_uj

if TYPE_CHECKING:
    from lem.config import ExperimentConfig

NAME = "rapl"


def open_meter(sampling_interval_ms: float, root: str | os.PathLike[str] | None = None) -> RaplMeter:
    """Find the RAPL zones under the powercap ``root`` and open a meter on every package and DRAM zone.

    :raises MeterUnavailable: no RAPL zones, or counters this user may not read (the message says what to do).
    """
    where = powercap_root(root)
    zones = discover(where)
    counted = [z for z in zones if z.component is not None]
    if not counted:
        raise MeterUnavailable(
            f"RAPL meter: no RAPL package or dram zone under {where} (this CPU or kernel has no powercap RAPL, "
            "or a virtual machine hides it); choose another energy meter"
        )
    for zone in counted:
        read_uj(zone)  # a refused read fails here, with what to do, not in the middle of a run
    notes = []
    interval_s = sampling_interval_ms / 1000.0
    shortest = min(counted, key=wrap_period_s)
    if interval_s <= 0 or interval_s > wrap_period_s(shortest) / 4:
        notes.append(
            f"measurement.sampling_interval_ms = {sampling_interval_ms:g} does not read RAPL often enough to see "
            f"every wrap of {shortest.name}'s counter (shortest wrap period ~{wrap_period_s(shortest):.0f} s)"
        )
    return RaplMeter(zones, interval_s, notes)


@hookimpl
def measure_energy(meter: str, devices: Sequence[int], config: ExperimentConfig) -> RaplMeter | None:
    """Open a RAPL meter when ``meter`` is ``"rapl"`` (it meters every socket, whatever ``devices`` says)."""
    if meter != NAME:
        return None
    return open_meter(config.measurement.sampling_interval_ms)


@hookimpl
def validate_config(config: ExperimentConfig) -> list[Problem]:
    """Warn when the timeline interval is too long for RAPL (the counter wraps unseen)."""
    m = config.measurement
    if NAME not in m.energy_meters or m.sampling_interval_ms > 0:
        return []
    return [
        warning(
            "measurement.sampling_interval_ms",
            "is 0: RAPL counters are then read at the window edges only, and a window longer than a counter's "
            "wrap period (minutes at full load) would lose energy without notice",
            "use 100 ms (the default)",
            m.sampling_interval_ms,
        )
    ]

"""The ``[codecarbon]`` table: our keys onto ``OfflineEmissionsTracker``'s arguments, in one table.

Everything else the tracker takes is fixed by :data:`FIXED`: lem writes its
own results (CodeCarbon writes no CSV and calls no API), and the energy it
reports is the hardware's (a PUE multiplier would change it).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

#: our key -> (OfflineEmissionsTracker argument, accepted Python types, what it is)
OPTIONS: dict[str, tuple[str, tuple[type, ...], str]] = {
    "country_iso_code": ("country_iso_code", (str,), "3-letter ISO code of the grid (CO2-equivalent), e.g. 'FRA'"),
    "region": ("region", (str,), "a US state or Canadian province, for its own carbon intensity"),
    "tracking_mode": ("tracking_mode", (str,), "'machine' (whole machine) or 'process' (this process's share)"),
    "force_cpu_power_w": ("force_cpu_power", (int, float), "CPU power to assume (W) instead of measuring"),
    "force_ram_power_w": ("force_ram_power", (int, float), "RAM power to assume (W) instead of its model"),
}
#: Tracker arguments lem always sets, and why.
FIXED: dict[str, Any] = {
    "output_methods": [],  # lem writes the results; no emissions.csv, no API
    "log_level": "error",
    "allow_multiple_runs": True,  # no lock file in the temp dir between worker processes
    "pue": 1.0,  # hardware energy, not facility energy
    "project_name": "lem",
}
#: Without a country the tracker still needs one to start; its CO2 figure is then not reported.
PLACEHOLDER_COUNTRY = "USA"
TRACKING_MODES = ("machine", "process")


def tracker_kwargs(table: Mapping[str, Any], gpu_ids: list[int] | None) -> dict[str, Any]:
    """``OfflineEmissionsTracker(**kwargs)`` for a ``[codecarbon]`` table (already validated)."""
    kwargs = dict(FIXED)
    for key, value in table.items():
        kwargs[OPTIONS[key][0]] = value
    kwargs.setdefault("country_iso_code", PLACEHOLDER_COUNTRY)
    if gpu_ids is not None:
        kwargs["gpu_ids"] = gpu_ids
    return kwargs


def check_against_library() -> list[str]:
    """Arguments of the table that the installed ``OfflineEmissionsTracker`` does not take (should be none)."""
    from codecarbon import OfflineEmissionsTracker
    from codecarbon.emissions_tracker import BaseEmissionsTracker

    accepted = set(inspect.signature(OfflineEmissionsTracker.__init__).parameters)
    accepted |= set(inspect.signature(BaseEmissionsTracker.__init__).parameters)
    wanted = {arg for arg, _, _ in OPTIONS.values()} | set(FIXED) | {"gpu_ids"}
    return sorted(wanted - accepted)


def country_codes() -> set[str]:
    """The countries CodeCarbon has a carbon intensity for (its offline energy-mix table)."""
    from codecarbon.input import DataSource

    return set(DataSource().get_global_energy_mix_data())

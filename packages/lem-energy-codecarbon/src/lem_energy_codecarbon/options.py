"""The ``[codecarbon]`` table: our keys onto ``OfflineEmissionsTracker``'s arguments, in one table.

Everything else the tracker takes is fixed by :data:`FIXED`: lem writes its
own results (CodeCarbon writes no CSV and calls no API), and the energy it
reports is the hardware's (a PUE multiplier would change it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lem.options import Option, Table, accepted_arguments

TRACKING_MODES = ("machine", "process")
_TRACKER = "OfflineEmissionsTracker"

#: The one visible table: our key -> ``OfflineEmissionsTracker`` argument.
TABLE = Table(
    "codecarbon",
    (
        Option(
            "country_iso_code",
            str,
            "3-letter ISO code of the grid (CO2-equivalent), e.g. 'FRA'",
            call=_TRACKER,
        ),
        Option("region", str, "a US state or Canadian province, for its own carbon intensity", call=_TRACKER),
        Option(
            "tracking_mode",
            str,
            "'machine' (whole machine) or 'process' (this process's share)",
            default="machine",
            call=_TRACKER,
            choices=TRACKING_MODES,
        ),
        Option(
            "force_cpu_power_w",
            float,
            "CPU power to assume (W) instead of measuring",
            call=_TRACKER,
            argument="force_cpu_power",
            gt=0,
        ),
        Option(
            "force_ram_power_w",
            float,
            "RAM power to assume (W) instead of its model",
            call=_TRACKER,
            argument="force_ram_power",
            gt=0,
        ),
    ),
    doc="the CodeCarbon meter: grid, region and tracking mode",
    calls={_TRACKER: "codecarbon:OfflineEmissionsTracker"},
)
TABLES = (TABLE,)

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


def tracker_kwargs(table: Mapping[str, Any], gpu_ids: list[int] | None) -> dict[str, Any]:
    """``OfflineEmissionsTracker(**kwargs)`` for a ``[codecarbon]`` table (already validated)."""
    kwargs = dict(FIXED)
    for key, value in table.items():
        kwargs[TABLE[key].names[0]] = value
    kwargs.setdefault("country_iso_code", PLACEHOLDER_COUNTRY)
    if gpu_ids is not None:
        kwargs["gpu_ids"] = gpu_ids
    return kwargs


def check_against_library() -> list[str]:
    """Arguments of the table that the installed ``OfflineEmissionsTracker`` does not take (should be none)."""
    from codecarbon import OfflineEmissionsTracker
    from codecarbon.emissions_tracker import BaseEmissionsTracker

    # The offline tracker passes **kwargs on to its base class: the two signatures together are what it takes.
    accepted = accepted_arguments(OfflineEmissionsTracker.__init__) | accepted_arguments(BaseEmissionsTracker.__init__)
    wanted = {o.names[0] for o in TABLE.options} | set(FIXED) | {"gpu_ids"}
    return sorted(wanted - accepted)


def country_codes() -> set[str]:
    """The countries CodeCarbon has a carbon intensity for (its offline energy-mix table)."""
    from codecarbon.input import DataSource

    return set(DataSource().get_global_energy_mix_data())

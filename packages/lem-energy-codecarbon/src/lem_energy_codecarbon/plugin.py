"""The ``codecarbon`` lem plugin: ``measure_energy`` and ``validate_config`` (the ``[codecarbon]`` table).

CodeCarbon is imported only when a meter is opened or its table is checked.
It never answers ``energy_meter = "auto"``: most of its figures are
estimates on a machine without RAPL, so it is used only when named.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from lem import hookimpl, options
from lem.errors import MeterUnavailable
from lem.types import Problem, error, warning
from lem_energy_codecarbon.meter import CodecarbonMeter
from lem_energy_codecarbon.options import TABLE, country_codes, tracker_kwargs
from lem_energy_codecarbon.options import TABLES as TABLES  # lem plugins --options codecarbon

if TYPE_CHECKING:
    from lem.config import ExperimentConfig

NAME = "codecarbon"


@hookimpl
def measure_energy(meter: str, devices: Sequence[int], config: ExperimentConfig) -> CodecarbonMeter | None:
    """Open a CodeCarbon meter when ``meter`` is ``"codecarbon"``; its GPU part covers ``devices`` (all if none)."""
    if meter != NAME:
        return None
    table = dict(config.options_for(NAME))
    try:
        return CodecarbonMeter(tracker_kwargs(table, list(devices) or None), co2="country_iso_code" in table)
    except ImportError as exc:
        raise MeterUnavailable(
            f"CodeCarbon meter: codecarbon cannot be imported ({exc}); pip install codecarbon"
        ) from exc


@hookimpl
def validate_config(config: ExperimentConfig) -> list[Problem]:
    """Check the ``[codecarbon]`` table when CodeCarbon is a chosen meter (and warn when it is not)."""
    table = dict(config.options_for(NAME))
    if NAME not in config.measurement.energy_meters:
        if table:
            return [warning(NAME, "table for the codecarbon meter, which this experiment does not use; it is ignored")]
        return []
    problems = options.check(TABLE, table)
    code = table.get("country_iso_code")
    if isinstance(code, str) and code not in country_codes():
        problems.append(
            error(
                f"{NAME}.country_iso_code",
                "is not a country CodeCarbon has a carbon intensity for",
                "use a 3-letter ISO 3166 code such as 'FRA', 'DEU' or 'USA'",
                code,
            )
        )
    if code is None:
        problems.append(
            warning(
                NAME,
                "no country_iso_code: energy is reported, but not its CO2-equivalent",
                "set [codecarbon] country_iso_code = 'FRA' (the grid the machine draws from)",
            )
        )
    return problems

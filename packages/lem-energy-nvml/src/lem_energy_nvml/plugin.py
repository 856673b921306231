"""The ``nvml`` lem plugin: ``measure_energy`` and ``validate_config`` for NVIDIA GPUs.

pynvml is imported only when a meter is opened, so loading this plugin is free.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from lem import hookimpl
from lem.errors import MeterUnavailable
from lem.types import Problem, warning
from lem_energy_nvml.devices import resolve_devices
from lem_energy_nvml.library import NvmlMissing, describe_error, init_nvml
from lem_energy_nvml.meter import SHORT_WINDOW_S, NvmlMeter

if TYPE_CHECKING:
    from lem.config import ExperimentConfig

NAME = "nvml"
#: Below this the sampler's own NVML calls become a measurable load, and NVML's readings do not update faster.
MIN_USEFUL_INTERVAL_MS = 10.0
#: Above this the timeline is too coarse to integrate power on GPUs without the counter.
MAX_USEFUL_INTERVAL_MS = 1000.0


def open_meter(
    devices: Sequence[int], sampling_interval_ms: float, environ: Mapping[str, str] | None = None
) -> NvmlMeter:
    """Start NVML and open a meter on CUDA ``devices``.

    :raises MeterUnavailable: no pynvml, no driver, or devices that do not exist (the message says which).
    """
    if not devices:
        raise MeterUnavailable(
            "NVML meter: no CUDA devices to meter (the model occupies none); "
            "set measurement.devices = [0] or choose energy_meter = 'none'"
        )
    nvml = init_nvml()
    try:
        resolved, notes = resolve_devices(nvml, devices, environ)
        return NvmlMeter(nvml, resolved, sampling_interval_ms / 1000.0, notes)
    except BaseException as exc:
        try:
            nvml.nvmlShutdown()
        except nvml.NVMLError:
            pass  # the original error is the one worth reporting
        if isinstance(exc, nvml.NVMLError):
            what = f"NVML meter: could not open CUDA devices {list(devices)}"
            raise MeterUnavailable(f"{what}: {describe_error(exc)}") from exc
        raise


@hookimpl
def measure_energy(meter: str, devices: Sequence[int], config: ExperimentConfig) -> NvmlMeter | None:
    """Open an NVML meter when ``meter`` is ``"nvml"``, or ``"auto"`` and NVML works here."""
    if meter not in (NAME, "auto"):
        return None
    if meter == "auto" and not devices:
        return None  # a CPU-only experiment: nothing for this meter to measure
    try:
        return open_meter(devices, config.measurement.sampling_interval_ms)
    except NvmlMissing:
        # "auto" on a machine without NVML is not an error: the runner records "no meter". Anything
        # else (a device number that does not exist, a GPU that fails) still raises under "auto".
        if meter == "auto":
            return None
        raise


@hookimpl
def validate_config(config: ExperimentConfig) -> list[Problem]:
    """Check ``[measurement]`` settings that matter when NVML is (or may be) the meter."""
    m = config.measurement
    if NAME not in m.energy_meters and m.energy_meters != ("auto",):
        return []
    problems = []
    interval = m.sampling_interval_ms
    if 0 < interval < MIN_USEFUL_INTERVAL_MS:
        problems.append(
            warning(
                "measurement.sampling_interval_ms",
                f"is below {MIN_USEFUL_INTERVAL_MS:.0f} ms: NVML power readings do not update that often "
                "and the sampler's calls start to load the CPU",
                "use 20-100 ms",
                interval,
            )
        )
    if interval > MAX_USEFUL_INTERVAL_MS:
        problems.append(
            warning(
                "measurement.sampling_interval_ms",
                f"is above {MAX_USEFUL_INTERVAL_MS:.0f} ms: the power/temperature timeline will be coarse and "
                "GPUs without an energy counter integrate power from these samples",
                "use 100 ms (the default)",
                interval,
            )
        )
    if 0 < m.idle_seconds < SHORT_WINDOW_S:
        problems.append(
            warning(
                "measurement.idle_seconds",
                f"is below {SHORT_WINDOW_S:.0f} s: the energy counter advances in ~100 ms steps, "
                "so a short idle baseline is imprecise",
                "use 5 s or more",
                m.idle_seconds,
            )
        )
    return problems

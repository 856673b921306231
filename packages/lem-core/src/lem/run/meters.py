"""Several energy meters at once: ``measurement.energy_meter = ["nvml", "rapl"]``.

:class:`CompositeMeter` opens one window on each named meter and combines
their windows into one. Each figure keeps its ``component`` (``gpu``, ``cpu``,
``dram``) and the ``meter`` that produced it, so results stay per component,
and the total says what it includes.

Two meters may read the same thing: CodeCarbon reads the GPUs through NVML
and the CPU through RAPL when it can. A component is counted once, from the
meter that reads it best (a counter before integrated power before an
estimate; on a tie a per-device reading before a total over all devices,
then the meter listed first). The choice is made on the first window and
kept, so every window of an experiment adds up the same things; the figures
left out are named in the window's warnings.

An experiment's meter is opened here once (:func:`open_metering`), and a
campaign checks here that every meter it names can open (:func:`check_meters`).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import attrs

from lem.config import ExperimentConfig
from lem.configfile.loading import Experiment
from lem.errors import MeterUnavailable
from lem.plugins import get_plugin_manager, meter_names
from lem.types import ALL_DEVICES, DeviceEnergy, EnergyMeter, EnergyWindow

NO_METER = "no energy meter installed: install lem-energy-nvml on an NVIDIA GPU machine"

#: Preference between two meters that read the same component (lower wins).
METHOD_RANK = {"counter": 0, "power-integration": 1, "estimate": 2}


class CompositeMeter:
    """Several open meters read as one (implements :class:`lem.types.EnergyMeter`).

    Windows nest: meters start in the order given and stop in reverse, so the
    first meter's window encloses the others' and its duration is the
    window's. The inner meters' edges lie within a few milliseconds of it
    (CodeCarbon's ``stop_task`` takes ~1 ms, a RAPL read ~µs).
    """

    def __init__(self, meters: Sequence[EnergyMeter]) -> None:
        if len(meters) < 2:
            raise ValueError("a composite meter needs at least two meters")
        self.meters = list(meters)
        self.name = "+".join(m.name for m in self.meters)
        #: component -> name of the meter whose figures count for it (fixed on the first window).
        self.chosen: dict[str, str] = {}

    def start(self) -> None:
        """Open a window on every meter, in order."""
        started: list[EnergyMeter] = []
        try:
            for meter in self.meters:
                meter.start()
                started.append(meter)
        except BaseException:
            for meter in reversed(started):  # leave no meter with a window open
                meter.stop()
            raise

    def stop(self) -> EnergyWindow:
        """Close every meter's window (in reverse order) and combine them."""
        windows = [meter.stop() for meter in reversed(self.meters)][::-1]
        if not self.chosen:
            self.chosen = choose(
                [(m.name, w) for m, w in zip(self.meters, windows, strict=True)],
            )
        return combine([(m.name, w) for m, w in zip(self.meters, windows, strict=True)], self.chosen)

    def environment(self) -> list[dict[str, Any]]:
        """Every meter's facts, each row tagged with its ``meter``."""
        return [{"meter": m.name, **row} for m in self.meters for row in m.environment()]

    def close(self) -> None:
        """Close every meter; the first error (if any) is raised once all are closed."""
        failure: BaseException | None = None
        for meter in self.meters:
            try:
                meter.close()
            except Exception as exc:  # close the rest, then report the first
                failure = failure or exc
        if failure is not None:
            raise failure


def _rank(figures: Sequence[DeviceEnergy]) -> tuple[int, int]:
    """How well a meter reads a component: best method first, then per device before all devices."""
    method = min((METHOD_RANK.get(str(d.method), len(METHOD_RANK)) for d in figures), default=len(METHOD_RANK))
    aggregate = int(all(d.device == ALL_DEVICES for d in figures))
    return method, aggregate


def choose(windows: Sequence[tuple[str, EnergyWindow]]) -> dict[str, str]:
    """For each component, the meter whose figures count (see the module docstring)."""
    by_component: dict[str, list[tuple[tuple[int, int, int], str]]] = {}
    for order, (name, window) in enumerate(windows):
        per: dict[str, list[DeviceEnergy]] = {}
        for d in window.devices:
            per.setdefault(d.component, []).append(d)
        for component, figures in per.items():
            by_component.setdefault(component, []).append(((*_rank(figures), order), name))
    return {component: min(candidates)[1] for component, candidates in by_component.items()}


def combine(windows: Sequence[tuple[str, EnergyWindow]], chosen: dict[str, str]) -> EnergyWindow:
    """One window from several meters' windows: the chosen meter's figures per component, rows and warnings tagged.

    :param windows: ``(meter name, window)`` in the order the meters were listed.
    :param chosen: component -> meter, from :func:`choose`; a component no meter was chosen for is kept.
    """
    devices: list[DeviceEnergy] = []
    timeline: list[dict[str, Any]] = []
    warnings: list[str] = []
    for name, window in windows:
        left_out = []
        for d in window.devices:
            owner = chosen.setdefault(d.component, name)
            if owner == name:
                devices.append(d if d.meter is not None else attrs.evolve(d, meter=name))
            else:
                left_out.append(d)
        for component in sorted({d.component for d in left_out}):
            methods = ", ".join(sorted({str(d.method) for d in left_out if d.component == component}))
            warnings.append(
                f"{name}: its {component} figure ({methods}) is left out of the total: {chosen[component]} "
                f"reads the {component} too, and it is counted once"
            )
        kept = {d.component for d in window.devices} - {d.component for d in left_out}
        for row in window.timeline:
            component = row.get("component", "gpu")
            if component in kept:
                timeline.append({**row, "component": component, "meter": name})
        warnings.extend(f"{name}: {w}" for w in window.warnings)
    return EnergyWindow(
        duration_s=windows[0][1].duration_s,
        devices=tuple(devices),
        timeline=tuple(sorted(timeline, key=lambda r: float(r.get("t_s", 0.0)))),
        warnings=tuple(warnings),
    )


def open_meters(
    names: Sequence[str], devices: Sequence[int], config: ExperimentConfig
) -> tuple[CompositeMeter | None, str | None]:
    """Open every meter in ``names`` over ``devices`` as one, or ``None`` and the reason.

    Every named meter must open: a total that silently lost a component would
    not be the total the configuration asked for.
    """
    hook = get_plugin_manager().hook.measure_energy
    which = f"energy meters {' + '.join(names)}"
    fix = "fix it, or remove it from measurement.energy_meter to measure the others"
    opened: list[EnergyMeter] = []
    try:
        for name in names:
            try:
                meter = hook(meter=name, devices=tuple(devices), config=config)
            except MeterUnavailable as exc:
                return None, f"{which}: '{name}' is unavailable: {exc} ({fix})"
            if meter is None:
                return None, f"{which}: no installed plugin provides energy meter '{name}' ({fix})"
            opened.append(meter)
        composite, opened = CompositeMeter(opened), []
        return composite, None
    finally:
        for meter in opened:  # a later meter failed: release the ones already open
            meter.close()


@attrs.define
class Metering:
    """The experiment's energy meter over ``devices``, or no meter and the ``reason`` there is none.

    Mutable: a run reopens the meter once on other devices when the backend placed the model there
    (``device_map = "auto"``).
    """

    devices: tuple[int, ...]
    meter: EnergyMeter | None
    reason: str | None


def named_explicitly(config: ExperimentConfig) -> bool:
    """Whether ``measurement.energy_meter`` names meters (not ``auto`` nor ``none``): those must work."""
    return config.measurement.energy_meters not in (("auto",), ("none",))


def open_metering(config: ExperimentConfig, devices: Sequence[int]) -> Metering:
    """The experiment's meter over ``devices`` (:func:`open_meter`) as a :class:`Metering`."""
    meter, reason = open_meter(config, devices)
    return Metering(tuple(devices), meter, reason)


def open_meter(config: ExperimentConfig, devices: Sequence[int]) -> tuple[EnergyMeter | None, str | None]:
    """The experiment's energy meter over ``devices``, or ``None`` and the reason there is none."""
    names = config.measurement.energy_meters
    if len(names) > 1:
        return open_meters(names, devices, config)
    name = names[0]
    if name == "none":
        return None, "energy metering is off (measurement.energy_meter = 'none')"
    devices = tuple(devices)
    try:
        meter = get_plugin_manager().hook.measure_energy(meter=name, devices=devices, config=config)
    except MeterUnavailable as exc:
        return None, f"energy meter '{name}' is unavailable: {exc}"
    if meter is None:
        reason = _why_no_meter(config, devices) if name == "auto" else None
        return None, reason or f"no installed plugin provides energy meter '{name}'"
    return meter, None


def _why_no_meter(config: ExperimentConfig, devices: Sequence[int]) -> str:
    """Under ``auto`` every meter declined; ask each by name, so the result says why (no driver, ...)."""
    reasons = []
    for name in meter_names():
        try:
            meter = get_plugin_manager().hook.measure_energy(meter=name, devices=devices, config=config)
        except MeterUnavailable as exc:
            reasons.append(f"{name}: {exc}")
            continue
        if meter is not None:  # works when named, declined 'auto': say so rather than guess
            meter.close()
            reasons.append(f"{name}: declined 'auto'; set measurement.energy_meter = '{name}' to use it")
    return f"no energy meter works here ({'; '.join(reasons)})" if reasons else NO_METER


def check_meters(experiments: Sequence[Experiment], pythons: Collection[str]) -> None:
    """Stop before any model loads if an explicitly named meter cannot work here (``auto`` may find none).

    Experiments of a backend run in another interpreter or through a launcher (``pythons``: ``--python``,
    ``--launch``) are checked by their worker.
    """
    seen: set[tuple[tuple[str, ...], tuple[int, ...]]] = set()
    for exp in experiments:
        names = exp.config.measurement.energy_meters
        devices = exp.config.metered_devices()
        if not named_explicitly(exp.config) or exp.config.backend in pythons or (names, devices) in seen:
            continue
        seen.add((names, devices))
        meter, reason = open_meter(exp.config, devices)
        if meter is None:
            raise MeterUnavailable(
                f"{exp.id}: measurement.energy_meter = {' + '.join(names)} cannot work here: {reason}"
                " (set energy_meter = 'auto' to run without energy figures where no meter works, or 'none')"
            )
        meter.close()

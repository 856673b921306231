"""The NVML energy meter: counter readings at the window edges, a sampled timeline in between.

Energy comes from ``nvmlDeviceGetTotalEnergyConsumption`` (mJ since driver
load) read at :meth:`NvmlMeter.start` and :meth:`NvmlMeter.stop`; the caller
synchronizes the device before each. Only a GPU without that counter (or a
counter that misbehaved in the window) has its energy integrated from the
sampled power, and then ``method`` says ``"power-integration"``.

Beside a counter figure each device also carries the sampled power integrated
over the same window (``integrated_j``: the cross-check, see docs/energy.md),
the counter's update period (timed when the meter opens: the counter is read
until it has advanced a few times; the H100's ~100 ms where it does not) and
its resolution (1 mJ).

**Edges aligned to the counter's updates.** The counter shows the energy at its
last update, up to one period (~100 ms) old: read as it is at both edges, a 5 s
window's energy is off by up to 2%. Where the counter was seen advancing when
the meter opened, each edge instead reads it until it advances (at most
:data:`EDGE_WAIT_PERIODS` periods): a window opens at that update, where the
value is fresh, and at the close the energy at the edge is interpolated
between the value read there and the next update (the previous update was one
period before it). ``edge_lag_s`` records how far in time the two edge values
may be from the edges: the read interval at each edge, plus a quarter period
at the close (linear interpolation within one period whose power changed at
the edge is off by at most period / 4 of the step) — against one period for
edges read as they are.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import attrs

from lem.types import DeviceEnergy, EnergyWindow
from lem_energy_nvml.devices import NvmlDevice
from lem_energy_nvml.library import (
    SOURCE_POWER_USAGE,
    describe_error,
    is_not_supported,
    optional,
    probe_power_source,
)
from lem_energy_nvml.sampler import SampledDevice, Sampler, integrate, integrate_window

#: How often the energy counter advances (measured on an H100: ~100 ms).
COUNTER_PERIOD_S = 0.1
#: Below this, one counter step is a noticeable share of the window.
SHORT_WINDOW_S = 1.0
#: The counter counts millijoules.
COUNTER_RESOLUTION_J = 0.001
#: How long the meter reads a counter when it opens, to time its update period.
PERIOD_PROBE_S = 0.35
PERIOD_GIVE_UP_S = 0.15
#: The name of the thread that times the counter when the meter opens.
PROBE_THREAD = "lem-nvml-period-probe"
#: A window edge reads a counter until it advances, for at most this many update periods.
EDGE_WAIT_PERIODS = 1.5
#: Pause between two rounds of edge reads (a read itself takes ~4 ms on an H100).
EDGE_POLL_S = 0.0005


@attrs.frozen
class Edge:
    """One counter at one window edge: the energy there (mJ, or the NVML error) and how far in time it may be
    from the edge (s)."""

    value: float | str
    aligned: bool
    lag_s: float


def combined_lag(start: Edge, end: Edge, period_s: float) -> float:
    """How far in time a window's two counter edges may be from the window's (s): one period when neither
    was aligned (each value is up to a period old, and the two lags differ by at most one period), else
    the sum of the edges' own bounds."""
    if not start.aligned and not end.aligned:
        return period_s
    return start.lag_s + end.lag_s


class NvmlMeter:
    """An open NVML meter on some devices (implements :class:`lem.types.EnergyMeter`)."""

    name = "nvml"

    def __init__(
        self,
        nvml: ModuleType,
        devices: Sequence[NvmlDevice],
        sampling_interval_s: float,
        notes: Sequence[str] = (),
    ) -> None:
        self._nvml = nvml
        self.devices = list(devices)
        self._notes = list(notes)
        self._measurable = [d for d in self.devices if d.unmeasurable is None]
        # Probed once: whether each GPU has the counter, and which power reading it offers.
        self.has_counter = {d.ordinal: self._probe_counter(d) for d in self._measurable}
        self.power_source = {d.ordinal: probe_power_source(nvml, d.handle) for d in self._measurable}
        self.update_period_s: dict[int, float] = {}
        #: Whether each counter was seen advancing when the meter opened (then the window edges align to it).
        self.ticking: dict[int, bool] = {}
        # Timed on a thread of its own, so its reads are told apart from the window edges'.
        probe = threading.Thread(target=self._probe_periods, name=PROBE_THREAD)
        probe.start()
        probe.join()
        self._sampler = Sampler(
            nvml,
            [SampledDevice(d.ordinal, d.handle, self.power_source[d.ordinal]) for d in self._measurable],
            sampling_interval_s,
        )
        self._start: dict[int, Edge] = {}
        self._t0_ns: int | None = None
        self._closed = False

    def _probe_counter(self, device: NvmlDevice) -> bool:
        try:
            self._nvml.nvmlDeviceGetTotalEnergyConsumption(device.handle)
        except self._nvml.NVMLError as exc:
            if is_not_supported(self._nvml, exc):
                return False
            raise
        return True

    def _probe_periods(self) -> None:
        for d in self._measurable:
            if self.has_counter[d.ordinal]:
                period, ticking = self._probe_period(d)
                self.update_period_s[d.ordinal] = period
                self.ticking[d.ordinal] = ticking

    def _probe_period(self, device: NvmlDevice) -> tuple[float, bool]:
        """The counter's update period and whether it was timed: the median time between its advances while
        read for :data:`PERIOD_PROBE_S`; :data:`COUNTER_PERIOD_S` (not timed) when it advanced fewer than 3
        times (or not at all in the first :data:`PERIOD_GIVE_UP_S`: a counter that is not moving)."""
        changes: list[float] = []
        last = None
        start = time.monotonic()
        deadline = start + PERIOD_PROBE_S
        while time.monotonic() < deadline:
            if not changes and time.monotonic() - start > PERIOD_GIVE_UP_S:
                break
            try:
                value = self._nvml.nvmlDeviceGetTotalEnergyConsumption(device.handle)
            except self._nvml.NVMLError:
                break
            if last is not None and value != last:
                changes.append(time.monotonic())
            last = value
            time.sleep(0.002)
        gaps = sorted(b - a for a, b in itertools.pairwise(changes))
        return (gaps[len(gaps) // 2], True) if len(gaps) >= 2 else (COUNTER_PERIOD_S, False)

    def _read_counters(self) -> tuple[int, dict[int, int | str]]:
        """Counter of every counter-equipped device (mJ, or the error text) and the mid-time of the reads."""
        readings: dict[int, int | str] = {}
        before = time.monotonic_ns()
        for device in self._measurable:
            if not self.has_counter[device.ordinal]:
                continue
            try:
                readings[device.ordinal] = int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(device.handle))
            except self._nvml.NVMLError as exc:
                readings[device.ordinal] = describe_error(exc)
        # Each read takes ~4 ms on an H100: the window edge is the middle of the reads.
        return (before + time.monotonic_ns()) // 2, readings

    def _edge(self, opening: bool) -> tuple[int, dict[int, Edge]]:
        """The counters at a window edge: the edge's time (ns) and each counter's :class:`Edge`.

        Every counter is read once; each that was seen advancing is then read until it advances (at most
        :data:`EDGE_WAIT_PERIODS` periods). Opening, the edge is the last of those updates (a counter that
        advanced earlier is carried forward at its last period's rate); closing, the edge is the first read,
        and the energy there is interpolated between that value (the update one period before the next) and
        the next update. A counter that did not advance in time, or failed, keeps its first reading.
        """
        first_ns, first = self._read_counters()
        waiting = {o: v for o, v in first.items() if isinstance(v, int) and self.ticking.get(o)}
        handles = {d.ordinal: d.handle for d in self._measurable}
        ticks: dict[int, tuple[int, int, int]] = {}  # ordinal -> (value, mid-time ns, ns since the previous read)
        last_read = dict.fromkeys(waiting, first_ns)
        if waiting:
            deadline = first_ns + int(EDGE_WAIT_PERIODS * max(self.update_period_s[o] for o in waiting) * 1e9)
            while waiting and time.monotonic_ns() < deadline:
                for o in list(waiting):
                    before = time.monotonic_ns()
                    try:
                        value = int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(handles[o]))
                    except self._nvml.NVMLError:
                        del waiting[o]  # this edge keeps its first reading; the next may fail and say so
                        continue
                    mid = (before + time.monotonic_ns()) // 2
                    if value != waiting[o]:
                        ticks[o] = (value, mid, mid - last_read[o])
                        del waiting[o]
                    last_read[o] = mid
                if waiting:
                    time.sleep(EDGE_POLL_S)
        edge_ns = max((t for _, t, _ in ticks.values()), default=first_ns) if opening else first_ns
        edges: dict[int, Edge] = {}
        for o, v in first.items():
            period = self.update_period_s.get(o, COUNTER_PERIOD_S)
            if o not in ticks or not isinstance(v, int):
                edges[o] = Edge(v, False, period)
                continue
            value, tick_ns, gap_ns = ticks[o]
            rate = (value - v) / period  # mJ/s over the period that ended at the update
            at = value + (edge_ns - tick_ns) / 1e9 * rate
            if opening:
                lag = gap_ns / 1e9 + (edge_ns - tick_ns) / 1e9
            else:
                at = min(max(at, float(v)), float(value))
                lag = gap_ns / 1e9 + period / 4
            edges[o] = Edge(at, True, lag)
        return edge_ns, edges

    def start(self) -> None:
        """Open a window: read the counters, then start the sampler."""
        if self._closed:
            raise RuntimeError("NVML meter: start() after close()")
        if self._t0_ns is not None:
            raise RuntimeError("NVML meter: start() while a window is open; call stop() first")
        self._t0_ns, self._start = self._edge(opening=True)
        self._sampler.start(self._t0_ns)

    def stop(self) -> EnergyWindow:
        """Close the window: stop the sampler, read the counters, and work out each device's energy."""
        if self._t0_ns is None:
            raise RuntimeError("NVML meter: stop() without start()")
        self._sampler.stop()
        t1_ns, end = self._edge(opening=False)
        duration = (t1_ns - self._t0_ns) / 1e9
        self._t0_ns = None
        warnings = list(self._notes)
        results = []
        for device in self.devices:
            start = self._start.get(device.ordinal)
            energy, notes = self._device_energy(device, start, end.get(device.ordinal), duration)
            results.append(energy)
            warnings.extend(notes)
        warnings.extend(self._window_warnings(duration))
        return EnergyWindow(
            duration_s=duration,
            devices=tuple(results),
            timeline=tuple(self._sampler.rows()),
            warnings=tuple(warnings),
        )

    def _window_warnings(self, duration: float) -> list[str]:
        if not any(self.has_counter.values()):
            return []
        period = max(self.update_period_s.values(), default=COUNTER_PERIOD_S)
        if duration < period:
            return [
                f"window of {duration * 1000:.0f} ms is shorter than the energy counter's update period "
                f"(~{period * 1000:.0f} ms): the counter cannot resolve it"
            ]
        if duration < SHORT_WINDOW_S:
            return [
                f"window of {duration:.2f} s is shorter than ~{SHORT_WINDOW_S:.0f} s: the energy counter advances "
                f"in ~{period * 1000:.0f} ms steps, so its granularity is a noticeable share of the figure"
            ]
        return []

    def _device_energy(
        self, device: NvmlDevice, start_edge: Edge | None, end_edge: Edge | None, duration: float
    ) -> tuple[DeviceEnergy, list[str]]:
        """One device's energy and any warnings about it."""
        label = f"CUDA device {device.ordinal} ({device.uuid})"
        if device.unmeasurable is not None:
            return DeviceEnergy(device.ordinal, device.uuid, None, None, device.unmeasurable), []
        series = self._sampler.power_series(device.ordinal)
        peak = max((p for _, p in series), default=None)
        lost = self._sampler.errors.get(device.ordinal)

        def result(energy: float | None, method: Any, reason: str | None = None) -> DeviceEnergy:
            mean = energy / duration if energy is not None and duration > 0 else None
            return DeviceEnergy(device.ordinal, device.uuid, energy, method, reason, mean, peak)

        warnings: list[str] = []
        if self.has_counter[device.ordinal]:
            assert start_edge is not None and end_edge is not None
            for edge, value in (("start", start_edge.value), ("end", end_edge.value)):
                if isinstance(value, str):
                    return result(
                        None, None, f"NVML error reading the energy counter of {label} at the window's {edge}: {value}"
                    ), warnings
            start, end = float(start_edge.value), float(end_edge.value)
            if lost is not None:
                warnings.append(f"{label}: sampling stopped mid-window ({lost}); the counter figure is kept")
            if end > start:
                counted = result((end - start) / 1000.0, "counter")
                period = self.update_period_s.get(device.ordinal, COUNTER_PERIOD_S)
                return attrs.evolve(
                    counted,
                    integrated_j=integrate_window(series, duration) if lost is None else None,
                    update_period_s=period,
                    resolution_j=COUNTER_RESOLUTION_J,
                    edge_lag_s=combined_lag(start_edge, end_edge, period),
                ), warnings
            why = (
                f"went backwards ({start:.0f} mJ -> {end:.0f} mJ: the driver was reloaded or the counter reset or "
                "wrapped)"
                if end < start
                else f"did not advance ({start:.0f} mJ) in {duration * 1000:.0f} ms"
            )
            fallback = integrate(series)
            if fallback is None:
                return result(
                    None, None, f"energy counter of {label} {why}, and too few power samples to integrate instead"
                ), warnings
            warnings.append(f"{label}: energy counter {why}; energy integrated from sampled power instead")
            return result(fallback, "power-integration"), warnings
        # No counter on this GPU: integrate sampled power.
        if lost is not None:
            return result(None, None, f"NVML error while sampling the power of {label}: {lost}"), warnings
        source = self.power_source[device.ordinal]
        if source is None:
            return result(None, None, f"{label} has neither an energy counter nor a power reading"), warnings
        energy = integrate(series)
        if energy is None:
            return result(
                None, None, f"{label} has no energy counter and too few power samples were taken to integrate"
            ), warnings
        if source == SOURCE_POWER_USAGE:
            warnings.append(
                f"{label}: no energy counter and no instant power field; energy integrates "
                "nvmlDeviceGetPowerUsage, a 1 s moving average on Ampere and newer GPUs"
            )
        return result(energy, "power-integration"), warnings

    def environment(self) -> list[dict[str, Any]]:
        """Per-device facts for ``environment.json``; a reading the GPU does not offer is ``None``."""
        nvml = self._nvml
        driver = optional(nvml, nvml.nvmlSystemGetDriverVersion)
        cuda = optional(nvml, nvml.nvmlSystemGetCudaDriverVersion)
        cuda_version = f"{cuda // 1000}.{cuda % 1000 // 10}" if isinstance(cuda, int) else None
        rows = []
        for device in self.devices:
            h = device.handle
            row: dict[str, Any] = {
                "device": device.ordinal,
                "uuid": device.uuid,
                "name": device.name,
                "driver_version": _text(driver),
                "cuda_driver_version": cuda_version,
                "mig": device.mig,
            }
            if h is not None:
                limit = optional(nvml, nvml.nvmlDeviceGetEnforcedPowerLimit, h)
                persistence = optional(nvml, nvml.nvmlDeviceGetPersistenceMode, h)
                memory = optional(nvml, nvml.nvmlDeviceGetMemoryInfo, h)
                mig_mode = optional(nvml, nvml.nvmlDeviceGetMigMode, h)
                row.update(
                    power_limit_w=limit / 1000.0 if limit is not None else None,
                    persistence_mode=bool(persistence) if persistence is not None else None,
                    max_sm_clock_mhz=optional(nvml, nvml.nvmlDeviceGetMaxClockInfo, h, 1),  # NVML_CLOCK_SM
                    max_mem_clock_mhz=optional(nvml, nvml.nvmlDeviceGetMaxClockInfo, h, 2),  # NVML_CLOCK_MEM
                    memory_total_mib=memory.total / (1024 * 1024) if memory is not None else None,
                    mig_mode=("enabled" if mig_mode[0] == 1 else "disabled") if mig_mode else None,
                )
            row["energy_method"] = (
                None if device.unmeasurable else "counter" if self.has_counter[device.ordinal] else "power-integration"
            )
            row["power_source"] = self.power_source.get(device.ordinal)
            row["counter_update_period_s"] = self.update_period_s.get(device.ordinal)
            row["unmeasurable_reason"] = device.unmeasurable
            rows.append(row)
        return rows

    def close(self) -> None:
        """Stop sampling if a window is open and release NVML."""
        if self._closed:
            return
        self._closed = True
        if self._t0_ns is not None:
            self._sampler.stop()
            self._t0_ns = None
        try:
            self._nvml.nvmlShutdown()
        except self._nvml.NVMLError:
            pass  # NVML already gone (driver unloaded): nothing left to release


def _text(value: Any) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def idle_power_w(meter: NvmlMeter, seconds: float, sleep: Callable[[float], None] = time.sleep) -> float | None:
    """Mean power (W, summed over the meter's devices) over ``seconds`` with nothing running.

    The same window the runner opens for its idle baseline; ``None`` when the
    energy of some device is unknown.
    """
    meter.start()
    sleep(seconds)
    window = meter.stop()
    total = window.total_j
    return None if total is None or window.duration_s <= 0 else total / window.duration_s

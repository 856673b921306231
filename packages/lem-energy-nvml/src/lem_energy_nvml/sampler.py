"""The background sampler: power, temperature, utilisation, memory, clock and throttle reasons.

One daemon thread reads every device each interval. It only makes cheap
NVML calls (never the ~4 ms energy counter) and keeps each sample as a tuple
in a list; the timeline dicts are built once, when the window closes. ctypes
releases the GIL during NVML calls, so the thread that launches the measured
work is not held up.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import attrs

from lem_energy_nvml.library import describe_error, is_not_supported, read_power_w, throttle_names, throttle_reader

#: Column order of a timeline row (``EnergyWindow.timeline``, the cycle's timeline CSV).
COLUMNS = (
    "t_s",
    "device",
    "power_w",
    "power_source",
    "temperature_c",
    "sm_util_pct",
    "mem_util_pct",
    "mem_used_mib",
    "sm_clock_mhz",
    "throttle_reasons",
)

_MIB = 1024 * 1024


@attrs.frozen
class SampledDevice:
    """A device to sample: its CUDA ordinal, NVML handle and the power reading it offers."""

    ordinal: int
    handle: Any
    power_source: str | None


class Sampler:
    """Samples ``devices`` every ``interval_s`` on a daemon thread between :meth:`start` and :meth:`stop`."""

    def __init__(self, nvml: ModuleType, devices: Sequence[SampledDevice], interval_s: float) -> None:
        self._nvml = nvml
        self._devices = list(devices)
        self._interval_s = interval_s
        self._throttle = throttle_reader(nvml)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0_ns = 0
        # (t_ns, ordinal, power_w, temperature_c, sm_util, mem_util, mem_used_mib, sm_clock_mhz, throttle_mask)
        self.samples: list[tuple[Any, ...]] = []
        #: First NVML error per device ordinal; that device is not sampled again in this window.
        self.errors: dict[int, str] = {}
        self._unsupported: set[tuple[int, str]] = set()

    def start(self, t0_ns: int) -> None:
        """Take a sample now (so even a tiny window has one at each edge) and start the thread."""
        self._t0_ns = t0_ns
        self.samples = []
        self.errors = {}
        self._stop.clear()
        self.sample_once()
        self._thread = threading.Thread(target=self._run, name="lem-nvml-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and take the closing sample."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.sample_once()

    def _run(self) -> None:
        interval_ns = int(self._interval_s * 1e9)
        deadline = time.monotonic_ns() + interval_ns
        while not self._stop.wait(max(0, deadline - time.monotonic_ns()) / 1e9):
            self.sample_once()
            deadline += interval_ns
            now = time.monotonic_ns()
            if deadline < now:  # fell behind (a slow call): skip rather than burst
                deadline = now + interval_ns

    def _read(self, device: SampledDevice, what: str, call: Any, *args: Any) -> Any:
        if (device.ordinal, what) in self._unsupported:
            return None
        try:
            return call(*args)
        except self._nvml.NVMLError as exc:
            if not is_not_supported(self._nvml, exc):
                raise
            self._unsupported.add((device.ordinal, what))
            return None

    def sample_once(self) -> None:
        """Read every device once and append the samples."""
        nvml = self._nvml
        for device in self._devices:
            if device.ordinal in self.errors:
                continue
            h = device.handle
            try:
                t_ns = time.monotonic_ns()
                power = self._read(device, "power", read_power_w, nvml, h, device.power_source)
                temp = self._read(device, "temp", nvml.nvmlDeviceGetTemperature, h, 0)  # NVML_TEMPERATURE_GPU
                util = self._read(device, "util", nvml.nvmlDeviceGetUtilizationRates, h)
                mem = self._read(device, "mem", nvml.nvmlDeviceGetMemoryInfo, h)
                clock = self._read(device, "clock", nvml.nvmlDeviceGetClockInfo, h, 1)  # NVML_CLOCK_SM
                mask = self._read(device, "throttle", self._throttle, h) if self._throttle else None
            except nvml.NVMLError as exc:
                self.errors[device.ordinal] = describe_error(exc)
                continue
            self.samples.append(
                (
                    t_ns,
                    device.ordinal,
                    power,
                    temp,
                    util.gpu if util is not None else None,
                    util.memory if util is not None else None,
                    mem.used / _MIB if mem is not None else None,
                    clock,
                    mask,
                )
            )

    def power_series(self, ordinal: int) -> list[tuple[float, float]]:
        """``(t_s, power_w)`` of one device, for integration and the peak."""
        return [((s[0] - self._t0_ns) / 1e9, s[2]) for s in self.samples if s[1] == ordinal and s[2] is not None]

    def rows(self) -> list[dict[str, Any]]:
        """The timeline rows (dicts keyed by :data:`COLUMNS`), ``t_s`` counted from the window start."""
        sources = {d.ordinal: d.power_source for d in self._devices}
        return [
            {
                "t_s": round((t_ns - self._t0_ns) / 1e9, 6),
                "device": ordinal,
                "power_w": power,
                "power_source": sources[ordinal] if power is not None else None,
                "temperature_c": temp,
                "sm_util_pct": sm,
                "mem_util_pct": mu,
                "mem_used_mib": round(used, 1) if used is not None else None,
                "sm_clock_mhz": clock,
                "throttle_reasons": throttle_names(mask),
            }
            for t_ns, ordinal, power, temp, sm, mu, used, clock, mask in self.samples
        ]


def integrate(series: Sequence[tuple[float, float]]) -> float | None:
    """Trapezoidal integral (J) of ``(t_s, power_w)`` samples; ``None`` with fewer than two."""
    if len(series) < 2:
        return None
    total = 0.0
    for (t0, p0), (t1, p1) in itertools.pairwise(series):
        total += (t1 - t0) * (p0 + p1) / 2.0
    return total


def integrate_window(series: Sequence[tuple[float, float]], duration_s: float) -> float | None:
    """The power samples integrated over the whole window ``[0, duration_s]`` (J): trapezoids between the
    samples, the first and last sample held flat out to the window's edges; ``None`` with fewer than two."""
    inside = [(t, p) for t, p in series if 0.0 <= t <= duration_s]
    if len(inside) < 2:
        return None
    edges = [(0.0, inside[0][1]), *inside, (duration_s, inside[-1][1])]
    return integrate(edges)

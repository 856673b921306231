"""A fake ``pynvml`` that stands in for NVIDIA hardware in tests (a supported testing helper, not a meter).

CI machines have no GPU, so tests put a module made by :func:`make_pynvml` in
``sys.modules["pynvml"]`` (:func:`install`), or on a subprocess's
``PYTHONPATH`` (:func:`write_pynvml`). It mimics the parts of pynvml that lem's
meter and backends use: the same function names, error classes and return
shapes. Each :class:`FakeGpu` is a board whose readings a test sets directly
(``gpu.energy_mj = ...``) so that every expected figure follows from what the
test wrote, not from a hard-coded measurement.

Any package's tests may use it (lem-energy-nvml is then a test requirement)::

    from lem_energy_nvml.testing import FakeGpu, install

    def test_my_meter_reads_one_board(monkeypatch):
        gpu = FakeGpu(uuid="GPU-0")
        install(monkeypatch, [gpu])
        gpu.energy_mj += 5_000  # 5 J between two counter reads
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    import pytest

NVML_SUCCESS = 0
NVML_ERROR_NOT_SUPPORTED = 3


class NVMLError(Exception):
    """Base of the fake NVML errors (pynvml's own maps error codes to subclasses like these)."""


def _error(name: str, text: str) -> type[NVMLError]:
    return type(name, (NVMLError,), {"__str__": lambda self: text})


ERRORS = {
    name: _error(name, text)
    for name, text in {
        "NVMLError_LibraryNotFound": "NVML Shared Library Not Found",
        "NVMLError_DriverNotLoaded": "Driver Not Loaded",
        "NVMLError_NotSupported": "Not Supported",
        "NVMLError_NotFound": "Not Found",
        "NVMLError_FunctionNotFound": "Function Not Found",
        "NVMLError_GpuIsLost": "GPU is lost",
        "NVMLError_NoPermission": "Insufficient Permissions",
    }.items()
}


@attrs.define
class FakeGpu:
    """One fake board. Set a reading to change what NVML reports; ``None`` features raise NotSupported."""

    uuid: str
    name: str = "NVIDIA H100 80GB HBM3"
    energy_mj: int | None = 1_000_000  # None: no energy counter on this GPU
    power_mw: int = 125_000
    instant_power: bool = True  # the NVML_FI_DEV_POWER_INSTANT field is offered
    temperature_c: int = 40
    util: tuple[int, int] = (0, 0)
    memory_used: int = 512 * 1024 * 1024
    memory_total: int = 80 * 1024**3
    sm_clock_mhz: int = 1980
    throttle_mask: int = 0x1
    mig_mode: int | None = 0  # None: MIG not supported
    mig_uuids: tuple[str, ...] = ()
    lost: bool = False
    compute_capability: tuple[int, int] = (9, 0)  # (major, minor), as nvmlDeviceGetCudaComputeCapability
    #: Names of threads that read the energy counter (the sampler must never do it).
    counter_readers: list[str] = attrs.field(factory=list)
    #: A scripted counter: when set, the counter advances by itself from ``power_mw`` (as set at each read)
    #: times ``counter_gain`` (1.0 agrees with the power readings, 1.1 reads 10% high), and only every
    #: ``counter_period_s`` seconds, as a real board's does.
    counter_period_s: float | None = None
    counter_gain: float = 1.0
    #: A scripted board: called with the board before every reading of it (from whichever thread reads), so
    #: a test sets readings from the time or from files the run writes (throttle while a marker exists...).
    script: Callable[[FakeGpu], None] | None = None
    _origin: float | None = None
    _last: float = 0.0
    _true_mj: float = 0.0

    def scripted_counter(self, now: float) -> int:
        """The scripted counter's value at ``now`` (monotonic seconds); see ``counter_period_s``."""
        assert self.energy_mj is not None and self.counter_period_s is not None
        if self._origin is None:
            self._origin = self._last = now
        self._true_mj += self.power_mw * (now - self._last)
        self._last = now
        # The counter shows the energy at the last update instant, not now.
        since_update = (now - self._origin) % self.counter_period_s
        shown = max(self._true_mj - self.power_mw * since_update, 0.0)
        # round, not int: the value at an update is a whole number of mJ that float error puts either side of.
        return self.energy_mj + round(self.counter_gain * shown)

    def check(self) -> None:
        """Run the board's script, then fail as a lost GPU does when ``lost`` is set (every reading calls this)."""
        if self.script is not None:
            self.script(self)
        if self.lost:
            raise ERRORS["NVMLError_GpuIsLost"]()


@attrs.define
class FakeMig:
    """One MIG slice of a board (what ``nvmlDeviceGetMigDeviceHandleByIndex`` returns)."""

    parent: FakeGpu
    uuid: str


def _not_supported() -> NVMLError:
    return ERRORS["NVMLError_NotSupported"]()


def make_pynvml(gpus: list[FakeGpu], init_error: str | None = None) -> ModuleType:
    """A module object shaped like pynvml over ``gpus`` (index order = PCI order)."""
    m = ModuleType("pynvml")
    m.__dict__.update(ERRORS)
    m.NVMLError = NVMLError
    m.NVML_FI_DEV_POWER_INSTANT = 186
    m.init_calls = 0
    m.shutdown_calls = 0

    def nvmlInit() -> None:
        if init_error is not None:
            raise ERRORS[init_error]()
        m.init_calls += 1

    def nvmlShutdown() -> None:
        m.shutdown_calls += 1

    def device_count() -> int:
        return len(gpus)

    def handle_by_index(index: int) -> FakeGpu:
        return gpus[index]

    def uuid(handle: Any) -> str:
        if isinstance(handle, FakeMig):
            return handle.uuid
        handle.check()
        return str(handle.uuid)

    def name(handle: FakeGpu) -> str:
        handle.check()
        return handle.name

    def mig_mode(handle: FakeGpu) -> list[int]:
        if handle.mig_mode is None:
            raise _not_supported()
        return [handle.mig_mode, handle.mig_mode]

    def max_mig(handle: FakeGpu) -> int:
        return 7 if handle.mig_mode else 0

    def mig_by_index(handle: FakeGpu, index: int) -> FakeMig:
        if index >= len(handle.mig_uuids):
            raise ERRORS["NVMLError_NotFound"]()
        return FakeMig(handle, handle.mig_uuids[index])

    def energy(handle: FakeGpu) -> int:
        handle.check()
        if handle.energy_mj is None:
            raise _not_supported()
        handle.counter_readers.append(threading.current_thread().name)
        if handle.counter_period_s is not None:
            return handle.scripted_counter(time.monotonic())
        return handle.energy_mj

    def field_values(handle: FakeGpu, field_ids: list[int]) -> list[Any]:
        handle.check()
        out = []
        for field in field_ids:
            ok = field == 186 and handle.instant_power
            out.append(
                SimpleNamespace(
                    fieldId=field,
                    nvmlReturn=NVML_SUCCESS if ok else NVML_ERROR_NOT_SUPPORTED,
                    valueType=1,  # NVML_VALUE_TYPE_UNSIGNED_INT
                    value=SimpleNamespace(uiVal=handle.power_mw if ok else 0),
                )
            )
        return out

    def power_usage(handle: FakeGpu) -> int:
        handle.check()
        return handle.power_mw

    def temperature(handle: FakeGpu, sensor: int) -> int:
        handle.check()
        return handle.temperature_c

    def utilization(handle: FakeGpu) -> Any:
        handle.check()
        return SimpleNamespace(gpu=handle.util[0], memory=handle.util[1])

    def memory(handle: FakeGpu) -> Any:
        handle.check()
        return SimpleNamespace(used=handle.memory_used, total=handle.memory_total, free=0)

    def clock(handle: FakeGpu, kind: int) -> int:
        handle.check()
        return handle.sm_clock_mhz

    def throttle(handle: FakeGpu) -> int:
        handle.check()
        return handle.throttle_mask

    def compute_capability(handle: FakeGpu) -> tuple[int, int]:
        handle.check()
        return handle.compute_capability

    m.__dict__.update(
        nvmlInit=nvmlInit,
        nvmlShutdown=nvmlShutdown,
        nvmlDeviceGetCount=device_count,
        nvmlDeviceGetHandleByIndex=handle_by_index,
        nvmlDeviceGetUUID=uuid,
        nvmlDeviceGetName=name,
        nvmlDeviceGetMigMode=mig_mode,
        nvmlDeviceGetMaxMigDeviceCount=max_mig,
        nvmlDeviceGetMigDeviceHandleByIndex=mig_by_index,
        nvmlDeviceGetTotalEnergyConsumption=energy,
        nvmlDeviceGetFieldValues=field_values,
        nvmlDeviceGetPowerUsage=power_usage,
        nvmlDeviceGetTemperature=temperature,
        nvmlDeviceGetUtilizationRates=utilization,
        nvmlDeviceGetMemoryInfo=memory,
        nvmlDeviceGetClockInfo=clock,
        nvmlDeviceGetCurrentClocksEventReasons=throttle,
        nvmlDeviceGetCudaComputeCapability=compute_capability,
        nvmlSystemGetDriverVersion=lambda: "580.65.06",
        nvmlSystemGetCudaDriverVersion=lambda: 13000,
        nvmlDeviceGetEnforcedPowerLimit=lambda h: 700_000,
        nvmlDeviceGetPersistenceMode=lambda h: 1,
        nvmlDeviceGetMaxClockInfo=lambda h, kind: 1980 if kind == 1 else 2619,
    )
    return m


def install(monkeypatch: pytest.MonkeyPatch, gpus: list[FakeGpu], init_error: str | None = None) -> ModuleType:
    """Put a fake ``pynvml`` over ``gpus`` in ``sys.modules`` for one test; returns the module.

    ``init_error`` names an error class ``nvmlInit`` raises (e.g. ``"NVMLError_DriverNotLoaded"``).
    """
    module = make_pynvml(gpus, init_error)
    monkeypatch.setitem(sys.modules, "pynvml", module)
    return module


def write_pynvml(directory: str | Path, boards: str = 'GPUS = [FakeGpu(uuid="GPU-0")]') -> Path:
    """Write a ``pynvml.py`` into ``directory`` that becomes this fake when a subprocess imports it.

    ``boards`` is Python source that binds ``GPUS`` to a list of :class:`FakeGpu` (``FakeGpu`` and
    ``make_pynvml`` are in scope; it may start a thread that advances the counters). Put ``directory``
    first on the subprocess's ``PYTHONPATH``. Returns ``directory``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    header = "import sys\nfrom lem_energy_nvml.testing import FakeGpu, make_pynvml\n"
    footer = "\nsys.modules[__name__] = make_pynvml(GPUS)\n"
    (directory / "pynvml.py").write_text(header + boards.strip("\n") + footer)
    return directory

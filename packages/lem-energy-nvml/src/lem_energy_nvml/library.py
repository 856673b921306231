"""Loading NVML and the few readings the meter takes from it.

``pynvml`` (distribution ``nvidia-ml-py``) is imported here, lazily, so that
importing the plugin costs nothing and a machine without it still lists the
plugin. Every way NVML can be missing becomes a :class:`MeterUnavailable`
whose message names the cause.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from lem.errors import MeterUnavailable

#: Field id of the instant power reading (mW); ``nvmlDeviceGetPowerUsage`` is a 1 s average on Ampere+.
FI_POWER_INSTANT = 186
#: The two power sources a timeline row can name (``power_source``).
SOURCE_INSTANT = "NVML_FI_DEV_POWER_INSTANT"
SOURCE_POWER_USAGE = "nvmlDeviceGetPowerUsage"

# nvmlClocksEventReason* bits (stable NVML ABI), named the way nvidia-smi names them.
_THROTTLE_BITS = (
    (0x1, "gpu_idle"),
    (0x2, "applications_clocks"),
    (0x4, "sw_power_cap"),
    (0x8, "hw_slowdown"),
    (0x10, "sync_boost"),
    (0x20, "sw_thermal"),
    (0x40, "hw_thermal"),
    (0x80, "hw_power_brake"),
    (0x100, "display_clock"),
)

# Why nvmlInit failed, by pynvml error class, in words a user can act on.
_INIT_CAUSES = {
    "NVMLError_LibraryNotFound": "no NVIDIA driver on this machine (libnvidia-ml.so.1 cannot be loaded)",
    "NVMLError_DriverNotLoaded": "the NVIDIA kernel driver is not loaded (is this a GPU machine? try nvidia-smi)",
    "NVMLError_NoPermission": "this user may not access the NVIDIA driver (check /dev/nvidia* permissions)",
    "NVMLError_LibRmVersionMismatch": (
        "the NVML library and the kernel driver versions differ (reboot or reload the driver)"
    ),
}

INSTALL_HINT = "pip install nvidia-ml-py"


class NvmlMissing(MeterUnavailable):
    """NVML itself is unusable here (no pynvml, no driver): ``energy_meter = "auto"`` then means "no meter"."""


def import_pynvml() -> ModuleType:
    """Import ``pynvml``, or raise :class:`MeterUnavailable` saying how to install it."""
    try:
        return importlib.import_module("pynvml")
    except ImportError as exc:
        raise NvmlMissing(f"NVML meter: the Python module 'pynvml' cannot be imported ({exc}); {INSTALL_HINT}") from exc


def init_nvml() -> ModuleType:
    """Import ``pynvml`` and call ``nvmlInit``; raise :class:`MeterUnavailable` with the precise reason."""
    nvml = import_pynvml()
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        kind = type(exc).__name__
        cause = _INIT_CAUSES.get(kind, str(exc))
        what = "NVML library not found" if kind == "NVMLError_LibraryNotFound" else "NVML could not start"
        raise NvmlMissing(f"{what} (pynvml.{kind}): {cause}") from exc
    return nvml


def describe_error(exc: BaseException) -> str:
    """``"NVMLError_GpuIsLost: GPU is lost"``: the class says what NVML meant, the text says it in words."""
    return f"{type(exc).__name__}: {exc}"


def is_not_supported(nvml: ModuleType, exc: BaseException) -> bool:
    """True for errors meaning "this GPU has no such reading" rather than "something broke"."""
    kinds = tuple(
        getattr(nvml, name)
        for name in ("NVMLError_NotSupported", "NVMLError_FunctionNotFound", "NVMLError_NotFound")
        if hasattr(nvml, name)
    )
    return isinstance(exc, kinds)


def field_value(value: Any) -> float | None:
    """The number in one ``c_nvmlFieldValue_t``, or ``None`` if NVML reported an error for it."""
    if value.nvmlReturn != 0:
        return None
    union = value.value
    # NVML_VALUE_TYPE_*: which member of the union holds the number.
    member = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal", 6: "usVal"}.get(
        int(value.valueType), "uiVal"
    )
    return float(getattr(union, member))


def instant_power_mw(nvml: ModuleType, handle: Any) -> float | None:
    """Instant power in mW from the field-values API, or ``None`` where the GPU does not offer it."""
    values = nvml.nvmlDeviceGetFieldValues(handle, [FI_POWER_INSTANT])
    return field_value(values[0])


def probe_power_source(nvml: ModuleType, handle: Any) -> str | None:
    """Which power reading this GPU offers: the instant field, else the plain (possibly averaged) one."""
    try:
        if instant_power_mw(nvml, handle) is not None:
            return SOURCE_INSTANT
    except nvml.NVMLError:
        pass  # older drivers lack the field API or the field: fall through to the plain reading
    try:
        nvml.nvmlDeviceGetPowerUsage(handle)
        return SOURCE_POWER_USAGE
    except nvml.NVMLError:
        return None


def read_power_w(nvml: ModuleType, handle: Any, source: str | None) -> float | None:
    """Power in W from ``source`` (see :func:`probe_power_source`)."""
    if source == SOURCE_INSTANT:
        mw = instant_power_mw(nvml, handle)
        return None if mw is None else mw / 1000.0
    if source == SOURCE_POWER_USAGE:
        return float(nvml.nvmlDeviceGetPowerUsage(handle)) / 1000.0
    return None


def throttle_reader(nvml: ModuleType) -> Any:
    """The clocks-event (throttle) reasons call of this pynvml (renamed in NVML 12.x)."""
    return getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or getattr(
        nvml, "nvmlDeviceGetCurrentClocksThrottleReasons", None
    )


def throttle_names(mask: int | None) -> str | None:
    """``0x24`` -> ``"sw_power_cap|sw_thermal"``; ``""`` for none, ``None`` when unknown."""
    if mask is None:
        return None
    return "|".join(name for bit, name in _THROTTLE_BITS if mask & bit)


def optional(nvml: ModuleType, call: Any, *args: Any) -> Any:
    """``call(*args)``, or ``None`` when NVML says the GPU does not support it."""
    try:
        return call(*args)
    except nvml.NVMLError as exc:
        if is_not_supported(nvml, exc):
            return None
        raise

"""Which accelerator a backend's model runs on, by the NVML name lem's peaks table knows it by.

A backend records ``LoadedModel.info["hardware"]`` (:func:`describe`); :mod:`lem.figures.hardware`
looks its ``device_name`` up to measure decode bandwidth and prefill FLOP utilisation, and where there
is no name, ``device_reason`` says why (the figures are then null with that reason, unless ``[hardware]``
gives the peaks). Backends whose engine owns CUDA in other processes (vLLM, TensorRT-LLM, a server)
name their devices here from CUDA ordinals, without creating a CUDA context: NVML numbers every GPU of
the machine by PCI bus and ignores ``CUDA_VISIBLE_DEVICES``, so the ordinals are mapped through that
variable's entries (an NVML index or a GPU UUID prefix), as CUDA maps them.

``pynvml`` is imported inside :func:`device_names` only: the plugin API stays free of it, and a machine
without it gets a name of ``None`` and the reason, never an error.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Collection, Mapping, Sequence
from types import ModuleType
from typing import Any

import attrs

#: ``copy_bandwidth`` of a backend that does not measure one (only the pytorch backend does).
NOT_MEASURED = {"gbs": None, "method": None, "reason": "not measured by this backend"}


def parse_visible_devices(value: str | None) -> list[str] | None:
    """The entries of ``CUDA_VISIBLE_DEVICES`` that CUDA honours; ``None`` when it is unset (all GPUs).

    Entries may be NVML indices (``"2"``), GPU UUIDs or unique prefixes of them, or MIG device UUIDs.
    Like CUDA, parsing stops at the first entry that is not valid.
    """
    if value is None:
        return None
    entries: list[str] = []
    for raw in value.split(","):
        entry = raw.strip()
        valid = entry.isdigit() or entry.startswith(("GPU-", "MIG-"))
        if not valid:
            break  # CUDA ignores this entry and everything after it (e.g. "-1" hides the rest)
        entries.append(entry)
    return entries


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _mig_mode(nvml: ModuleType, handle: Any) -> bool:
    try:
        mode = nvml.nvmlDeviceGetMigMode(handle)
    except nvml.NVMLError:  # not supported on this board: no MIG
        return False
    return bool(mode and mode[0] == 1)


MIG = (
    "is a MIG slice, which has a share of the board's memory bandwidth and compute that lem's peaks table does not hold"
)


class DeviceMapError(ValueError):
    """A CUDA ordinal that names no single GPU of this machine; the message says which and why."""


@attrs.frozen
class Visible:
    """A CUDA ordinal and the ``CUDA_VISIBLE_DEVICES`` entry it stands for.

    :param index: NVML's index of the board; ``None`` for a MIG slice (``entry`` is its ``MIG-`` UUID).
    """

    ordinal: int
    entry: str
    index: int | None


def map_ordinals(ordinals: Sequence[int], uuids: Sequence[str], environ: Mapping[str, str]) -> list[Visible]:
    """Map CUDA ordinals to NVML's boards (by index, in NVML's order, with their ``uuids``), as CUDA numbers
    the devices ``CUDA_VISIBLE_DEVICES`` lists. The one rule that naming (here) and energy metering
    (lem-energy-nvml) both use.

    :raises DeviceMapError: an ordinal past the visible devices, an index NVML does not have, a UUID prefix
        that matches no board or several.
    """
    raw = environ.get("CUDA_VISIBLE_DEVICES")
    entries = parse_visible_devices(raw)
    visible = entries if entries is not None else [str(i) for i in range(len(uuids))]
    where = f"CUDA_VISIBLE_DEVICES={raw!r}" if raw is not None else "CUDA_VISIBLE_DEVICES unset"
    mapped: list[Visible] = []
    for ordinal in ordinals:
        if not 0 <= ordinal < len(visible):
            raise DeviceMapError(
                f"CUDA device {ordinal} does not exist ({where} exposes {len(visible)} device(s) "
                f"of {len(uuids)} on this machine)"
            )
        entry = visible[ordinal]
        if entry.startswith("MIG-"):
            mapped.append(Visible(ordinal, entry, None))
        elif entry.isdigit():
            if int(entry) >= len(uuids):
                raise DeviceMapError(f"{where} names GPU index {entry}, but NVML sees {len(uuids)} GPU(s)")
            mapped.append(Visible(ordinal, entry, int(entry)))
        else:
            matches = [i for i, uuid in enumerate(uuids) if uuid.startswith(entry)]
            if len(matches) != 1:
                what = "matches no GPU" if not matches else f"matches {len(matches)} GPUs"
                raise DeviceMapError(
                    f"{where}: {entry!r} {what} (GPUs on this machine: {', '.join(uuids) or 'none'}); "
                    "use a longer, unique UUID"
                )
            mapped.append(Visible(ordinal, entry, matches[0]))
    return mapped


def order_ambiguous(models: Collection[str | None], environ: Mapping[str, str]) -> bool:
    """True when CUDA's device numbers may not be NVML's: CUDA numbers GPUs fastest first unless
    ``CUDA_DEVICE_ORDER=PCI_BUS_ID``, NVML by PCI bus. The two agree when every board is the same model
    (``models``: one name per board), and UUID entries do not depend on the order at all."""
    if environ.get("CUDA_DEVICE_ORDER") == "PCI_BUS_ID" or len(set(models)) < 2:
        return False
    entries = parse_visible_devices(environ.get("CUDA_VISIBLE_DEVICES"))
    return entries is None or any(e.isdigit() for e in entries)


def _names(nvml: ModuleType, ordinals: Sequence[int], env: Mapping[str, str]) -> tuple[list[str] | None, str | None]:
    handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
    try:
        mapped = map_ordinals(ordinals, [_text(nvml.nvmlDeviceGetUUID(h)) for h in handles], env)
    except DeviceMapError as exc:
        return None, str(exc)
    models = [_text(nvml.nvmlDeviceGetName(h)) for h in handles]  # one name per board, in NVML's order
    names: list[str] = []
    for device in mapped:
        if device.index is None:
            return None, f"CUDA device {device.ordinal} ({device.entry}) {MIG}"
        if _mig_mode(nvml, handles[device.index]):
            return None, f"CUDA device {device.ordinal} is a board in MIG mode: each of its slices {MIG}"
        names.append(models[device.index])
    if order_ambiguous(models, env):
        return None, (
            f"this machine mixes GPU models ({', '.join(sorted(set(models)))}) and CUDA_DEVICE_ORDER is not "
            "PCI_BUS_ID, so CUDA's device numbers may not be NVML's; set CUDA_DEVICE_ORDER=PCI_BUS_ID"
        )
    return names, None


def device_names(
    ordinals: Sequence[int], environ: Mapping[str, str] | None = None
) -> tuple[list[str] | None, str | None]:
    """NVML names of the CUDA devices ``ordinals`` (as a process with ``environ`` numbers them), or
    ``None`` and the reason they cannot be known (no pynvml, no driver, a MIG slice, an unknown ordinal)."""
    env = os.environ if environ is None else environ
    try:
        nvml = importlib.import_module("pynvml")
    except ImportError as exc:
        return None, f"the GPU cannot be named: pynvml cannot be imported ({exc}); pip install nvidia-ml-py"
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        return None, f"the GPU cannot be named: NVML could not start ({type(exc).__name__}: {exc})"
    try:
        return _names(nvml, ordinals, env)
    except nvml.NVMLError as exc:
        return None, f"the GPU cannot be named: NVML failed ({type(exc).__name__}: {exc})"
    finally:
        try:
            nvml.nvmlShutdown()  # NVML counts its inits: a meter's own session stays open
        except nvml.NVMLError:
            pass


def describe(
    ordinals: Sequence[int],
    environ: Mapping[str, str] | None = None,
    *,
    none_reason: str = "the model runs on no GPU",
    copy_bandwidth: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``LoadedModel.info["hardware"]``: ``{device_name, device_names, device_reason, devices, copy_bandwidth}``.

    :param ordinals: the CUDA devices the model runs on; empty when it runs on none (``none_reason`` says why).
    :param environ: the environment the engine runs in (``CUDA_VISIBLE_DEVICES``); default this process's.
    :param copy_bandwidth: a measured copy bandwidth (``gbs``, ``method``, ``reason``); default: not measured.
    """
    names: list[str] | None = None
    if ordinals:
        names, reason = device_names(ordinals, environ)
    else:
        reason = none_reason
    name = None
    if names:
        if len(set(names)) == 1:
            name = names[0]
        else:
            reason = (
                f"the model runs on GPUs of different models ({', '.join(sorted(set(names)))}): no one peak applies"
            )
    return {
        "device_name": name,
        "device_names": names,
        "device_reason": reason,
        "devices": list(ordinals),
        "copy_bandwidth": dict(copy_bandwidth or NOT_MEASURED),
    }

"""From CUDA device ordinals (as this process sees them) to NVML devices, by UUID.

CUDA numbers the devices listed in ``CUDA_VISIBLE_DEVICES`` from 0; NVML
ignores that variable and numbers every GPU of the machine in PCI bus order.
Entries may be NVML indices (``"2"``), GPU UUIDs or unique prefixes of them
(``"GPU-8932f937"``) or MIG device UUIDs (``"MIG-..."``, or the older
``"MIG-GPU-<uuid>/<gi>/<ci>"``). Like CUDA, parsing stops at the first entry
that is not valid (:func:`lem.accelerators.map_ordinals`, which backends also use to name their GPUs).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

import attrs

from lem.accelerators import DeviceMapError, map_ordinals, order_ambiguous
from lem.errors import MeterUnavailable
from lem_energy_nvml.library import describe_error, optional

MIG_REASON = (
    "MIG slice: NVML's energy counter and power readings are per board and are shared with the other "
    "slices, so this slice's energy cannot be attributed (not measured rather than a made-up share)"
)


@attrs.frozen
class NvmlDevice:
    """One device the experiment uses, resolved to NVML.

    :param ordinal: the CUDA ordinal the experiment named.
    :param uuid: the NVML UUID (``GPU-...``, or ``MIG-...`` for a slice).
    :param handle: the NVML handle of the board (for a MIG slice: its parent, when found).
    :param mig: the device is a MIG slice or a board in MIG mode.
    :param unmeasurable: why energy cannot be measured on it (MIG), else ``None``.
    """

    ordinal: int
    uuid: str | None
    handle: Any
    name: str | None
    mig: bool = False
    unmeasurable: str | None = None


def _uuid(nvml: ModuleType, handle: Any) -> str:
    uuid = nvml.nvmlDeviceGetUUID(handle)
    return uuid.decode() if isinstance(uuid, bytes) else str(uuid)


def _name(nvml: ModuleType, handle: Any) -> str | None:
    name = optional(nvml, nvml.nvmlDeviceGetName, handle)
    return name.decode() if isinstance(name, bytes) else name


def mig_enabled(nvml: ModuleType, handle: Any) -> bool:
    """True when the board is in MIG mode (current mode, not pending)."""
    mode = optional(nvml, nvml.nvmlDeviceGetMigMode, handle)
    return bool(mode and mode[0] == 1)


def _boards(nvml: ModuleType) -> list[tuple[Any, str]]:
    count = nvml.nvmlDeviceGetCount()
    boards = []
    for index in range(count):
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        boards.append((handle, _uuid(nvml, handle)))
    return boards


def _find_mig_parent(nvml: ModuleType, boards: list[tuple[Any, str]], entry: str) -> tuple[Any, str] | None:
    """The board holding MIG device ``entry`` (``MIG-<uuid>`` or ``MIG-GPU-<uuid>/gi/ci``)."""
    if entry.startswith("MIG-GPU-"):
        parent_uuid = entry[len("MIG-") :].split("/")[0]
        return next(((h, u) for h, u in boards if u == parent_uuid), None)
    for handle, uuid in boards:
        if not mig_enabled(nvml, handle):
            continue
        for slot in range(nvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
            try:
                mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
            except nvml.NVMLError:
                continue  # an empty slot
            if _uuid(nvml, mig).startswith(entry):
                return handle, uuid
    return None


def resolve_devices(
    nvml: ModuleType, ordinals: Sequence[int], environ: Mapping[str, str] | None = None
) -> tuple[list[NvmlDevice], list[str]]:
    """Resolve CUDA ordinals to NVML devices (:func:`lem.accelerators.map_ordinals`, the rule backends use
    to name their GPUs); also return warnings about the mapping.

    :raises MeterUnavailable: an ordinal that does not exist, an ambiguous or unknown UUID.
    """
    env = os.environ if environ is None else environ
    boards = _boards(nvml)
    try:
        mapped = map_ordinals(ordinals, [uuid for _, uuid in boards], env)
    except DeviceMapError as exc:
        raise MeterUnavailable(f"NVML meter: {exc}; fix measurement.devices or CUDA_VISIBLE_DEVICES") from None
    devices: list[NvmlDevice] = []
    for device in mapped:
        if device.index is None:
            parent = _find_mig_parent(nvml, boards, device.entry)
            handle = parent[0] if parent else None
            reason = MIG_REASON + (f" (parent GPU {parent[1]})" if parent else " (parent GPU not found)")
            name = _name(nvml, handle) if handle else None
            devices.append(NvmlDevice(device.ordinal, device.entry, handle, name, True, reason))
            continue
        handle, uuid = boards[device.index]
        mig = mig_enabled(nvml, handle)
        devices.append(NvmlDevice(device.ordinal, uuid, handle, _name(nvml, handle), mig, MIG_REASON if mig else None))
    return devices, _order_warning(nvml, env, boards)


def _order_warning(nvml: ModuleType, env: Mapping[str, str], boards: list[tuple[Any, str]]) -> list[str]:
    if len(boards) < 2:
        return []
    try:
        names = [_name(nvml, h) for h, _ in boards]
    except nvml.NVMLError as exc:
        return [f"could not compare GPU models to check device order: {describe_error(exc)}"]
    if not order_ambiguous(names, env):
        return []
    return [
        "this machine mixes GPU models and CUDA_DEVICE_ORDER is not PCI_BUS_ID: CUDA's device numbers may differ "
        "from NVML's, so energy may be read from the wrong GPU; set CUDA_DEVICE_ORDER=PCI_BUS_ID"
    ]

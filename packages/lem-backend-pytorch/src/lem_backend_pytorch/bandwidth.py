"""The accelerator the model runs on, and its device-to-device copy bandwidth, measured once at load.

Recorded in ``LoadedModel.info["hardware"]``: lem-core looks the device name up in its peaks table
(:mod:`lem.figures.hardware`) and keeps the measured copy bandwidth beside the table's peak.
"""

from __future__ import annotations

from typing import Any

import torch

#: How :func:`copy_bandwidth` measures, recorded with its figure.
METHOD = (
    "device-to-device copy of 256 MiB (torch Tensor.copy_), CUDA events, best of 5 after one warm-up; "
    "bytes read + bytes written over the time"
)
SIZE = 256 << 20


def copy_bandwidth(device: torch.device) -> dict[str, Any]:
    """``{gbs, method, reason}``: GB/s a copy on ``device`` reaches; ``gbs`` null with the reason off CUDA."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return {"gbs": None, "method": None, "reason": f"the model is on {device.type}: no device copy measured"}
    src = torch.empty(SIZE, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    best = float("inf")
    for i in range(6):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        if i:  # the first copy warms up
            best = min(best, start.elapsed_time(end) / 1e3)
    del src, dst
    return {"gbs": 2 * SIZE / best / 1e9, "method": METHOD, "reason": None}


def describe(device: torch.device) -> dict[str, Any]:
    """``{device_name, copy_bandwidth}`` of the device the model's inputs go to (its first device)."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" and torch.cuda.is_available() else None
    return {"device_name": name, "copy_bandwidth": copy_bandwidth(device)}

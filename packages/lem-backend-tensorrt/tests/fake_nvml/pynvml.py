"""A FAKE ``pynvml`` for lem's TensorRT-LLM tests: GPUs are hardware this machine does not have.

Only what the backend's compute-capability check reads. ``LEM_FAKE_CC``
(``"9.0"`` by default) is the capability of every device.
"""

from __future__ import annotations

import os


class NVMLError(Exception):
    pass


def nvmlInit() -> None:
    pass


def nvmlShutdown() -> None:
    pass


def nvmlDeviceGetHandleByIndex(index: int) -> int:
    return index


def nvmlDeviceGetName(handle: int) -> str:
    return "Fake GPU"


def nvmlDeviceGetCudaComputeCapability(handle: int) -> tuple[int, int]:
    major, minor = os.environ.get("LEM_FAKE_CC", "9.0").split(".")
    return int(major), int(minor)

"""What machine and software produced a result: the facts written to ``environment.json``.

Versions come from installed-package metadata, never by importing the
packages (importing torch or vllm costs seconds and may touch the GPU). CUDA
driver facts come from ``nvidia-smi`` when it exists; per-GPU facts (name,
UUID, power limit...) from the energy meter's ``environment()``.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from typing import Any

#: Libraries whose version changes the numbers, recorded when installed.
TRACKED = (
    "torch",
    "transformers",
    "vllm",
    "tensorrt_llm",
    "accelerate",
    "flash_attn",
    "nvidia-ml-py",
    "pynvml",
    "bitsandbytes",
    "peft",
    "tokenizers",
    "datasets",
)


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def lem_versions() -> dict[str, str]:
    """Versions of every installed ``lem-*`` distribution (core and plugins)."""
    out = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"] or ""
        if name.lower().replace("_", "-").startswith("lem-"):
            out[name] = dist.version
    return dict(sorted(out.items()))


def library_versions() -> dict[str, str | None]:
    """Versions of the tracked inference libraries (``None`` when not installed)."""
    return {name: _version(name) for name in TRACKED}


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _ram_bytes() -> int | None:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def nvidia_smi() -> dict[str, Any]:
    """Driver version and the CUDA version the driver supports, from ``nvidia-smi`` (empty if absent)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return {"available": False}
    out: dict[str, Any] = {"available": True}
    try:
        q = subprocess.run(
            [exe, "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
        out["driver_version"] = q.stdout.strip().splitlines()[0] if q.stdout.strip() else None
        head = subprocess.run([exe], capture_output=True, text=True, timeout=20, check=False).stdout
        for token in head.split("|"):
            if "CUDA Version" in token:
                out["cuda_driver_api_version"] = token.split("CUDA Version:")[1].strip()
    except (OSError, subprocess.SubprocessError, IndexError) as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out


def capture(gpus: list[dict[str, Any]] | None = None, gpu_reason: str | None = None) -> dict[str, Any]:
    """Everything ``environment.json`` holds.

    :param gpus: per-device facts from the energy meter's ``environment()``.
    :param gpu_reason: why ``gpus`` is missing (no meter), recorded instead of an empty list.
    """
    uname = platform.uname()
    return {
        "os": {
            "system": uname.system,
            "release": uname.release,
            "version": uname.version,
            "machine": uname.machine,
            "platform": platform.platform(),
        },
        "hostname": uname.node,
        "cpu": {
            "model": _cpu_model(),
            "logical_cores": os.cpu_count(),
            "available_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        },
        "ram_bytes": _ram_bytes(),
        "python": {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
            "executable": sys.executable,
        },
        "packages": {"lem": lem_versions(), "libraries": library_versions()},
        "cuda": {"cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), **nvidia_smi()},
        "gpus": gpus,
        "gpus_reason": gpu_reason,
    }

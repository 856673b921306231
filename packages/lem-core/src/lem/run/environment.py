"""What machine and software produced a result: the facts written to ``environment.json``.

Versions come from installed-package metadata, never by importing the
packages (importing torch or vllm costs seconds and may touch the GPU). CUDA
driver facts come from ``nvidia-smi`` when it exists; per-GPU facts (name,
UUID, power limit...) from the energy meter's ``environment()``; the GPUs
``nvidia-smi`` lists are recorded too, so a run without a meter still says
which GPUs its worker saw (inside a container: the container's view).

The worker writes ``environment.json`` where it runs; the campaign adds what
only it knows (:func:`add_to_environment`): the launcher that started the
worker, a Ray node.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from lem.results.files import write_atomic

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
            [exe, "--query-gpu=driver_version,name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
        rows = [line.split(", ", 1) for line in q.stdout.strip().splitlines() if line.strip()]
        out["driver_version"] = rows[0][0] if rows else None
        out["visible_gpus"] = [row[-1] for row in rows]
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


def add_to_environment(exp_dir: Path, key: str, value: Any) -> None:
    """Add ``key`` to the ``environment.json`` in ``exp_dir`` (if the worker wrote one), atomically."""
    path = exp_dir / "environment.json"
    if path.exists():
        doc = json.loads(path.read_text(encoding="utf-8"))
        doc[key] = value
        write_atomic(path, json.dumps(doc, indent=1, allow_nan=False, default=str) + "\n")

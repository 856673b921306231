"""Which GPUs the server's model runs on, named for lem's peaks table (``LoadedModel.info["hardware"]``).

A server lem starts (managed) runs on this machine, on the GPUs it was given: ``measurement.devices``,
else one per tensor x pipeline rank (the devices lem meters), numbered through the server's own
``CUDA_VISIBLE_DEVICES`` (``[server].env`` over lem's environment). llama.cpp's server runs on the CPU
when its build has no GPU offload, which the server's interpreter is asked. An external server runs on
hardware lem cannot see: no name, and the reason says to give the peaks in ``[hardware]``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from lem import accelerators
from lem.config import ExperimentConfig
from lem_backend_server import process

#: Asked of the interpreter that runs llama.cpp's server: does this build offload to a GPU?
LLAMACPP_OFFLOAD = "import llama_cpp; print(bool(llama_cpp.llama_supports_gpu_offload()))"


def external(url: str) -> dict[str, Any]:
    """An external server: its device cannot be named from here."""
    why = f"server.url = {url!r} is a server on hardware lem cannot see, so its GPU is not named"
    return accelerators.describe((), none_reason=why)


def managed(config: ExperimentConfig, engine: str | None, env: Mapping[str, str], python: str) -> dict[str, Any]:
    """A server lem started here: the GPUs it was given, by their NVML names."""
    if engine == "llamacpp":
        found = process.version_from_command([python, "-c", LLAMACPP_OFFLOAD])
        if found != "True":
            why = (
                f"the llama.cpp server in {python} has no GPU offload: the model runs on the CPU, whose peaks "
                "lem's table lacks"
                if found == "False"
                else f"could not ask {python} whether its llama.cpp build offloads to a GPU"
            )
            return accelerators.describe((), none_reason=why)
    # The devices lem meters for a server: the server owns them, not lem's process.
    return accelerators.describe(config.metered_devices(), {**os.environ, **env})

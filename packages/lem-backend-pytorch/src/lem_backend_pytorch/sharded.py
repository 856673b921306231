"""Random-weight models spread over several devices (``device_map = "auto"`` with a ``random:`` model).

``from_config`` takes no ``device_map``, so this does what ``from_pretrained``
does for missing weights: build the model on the meta device, let accelerate
plan the placement (balanced over the GPUs, honouring ``max_memory``),
allocate each part on its device, run the model's own weight initialisation
there (which also recomputes rotary buffers), and dispatch it with accelerate's
hooks. No weights ever touch the CPU unless the map puts them there.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from accelerate import dispatch_model, infer_auto_device_map
from accelerate.utils import get_balanced_memory
from transformers import AutoModelForCausalLM


def plan(model: Any, device_map: str | Mapping[str, Any], max_memory: Mapping[Any, Any] | None, dtype: Any) -> dict:
    """The accelerate device map for ``model`` (a meta model)."""
    if isinstance(device_map, Mapping):
        return dict(device_map)
    no_split = list(getattr(model, "_no_split_modules", None) or [])
    memory = dict(max_memory) if max_memory else None
    if device_map in ("auto", "balanced", "balanced_low_0"):
        memory = get_balanced_memory(
            model,
            max_memory=memory,
            no_split_module_classes=no_split,
            dtype=dtype,
            low_zero=device_map == "balanced_low_0",
        )
    elif device_map != "sequential":
        return {"": device_map}
    return dict(infer_auto_device_map(model, max_memory=memory, no_split_module_classes=no_split, dtype=dtype))


def random_sharded(hf_config: Any, build: dict[str, Any], device_map: Any, max_memory: Any) -> Any:
    """A random-weight model placed by ``device_map`` (see the module docstring)."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config, **build)
    placement = plan(model, device_map, max_memory, build["dtype"])
    for name, device in placement.items():
        if device == "disk":
            raise ValueError("random-weight models cannot be offloaded to disk; give more max_memory")
        part = model.get_submodule(name) if name else model
        part.to_empty(device=device, recurse=True)
    for t in (*model.modules(), *model.parameters(), *model.buffers()):
        if hasattr(t, "_is_hf_initialized"):
            del t._is_hf_initialized
    model.init_weights()
    if len(set(placement.values())) > 1:
        return dispatch_model(model, device_map=placement)
    model.hf_device_map = placement
    return model

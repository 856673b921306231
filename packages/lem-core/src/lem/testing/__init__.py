"""Helpers for testing lem and lem plugins (the pytest plugin lives in :mod:`lem.testing.pytest_plugin`).

Nothing here is a user-facing backend.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def build_tiny_model(dest: str | Path, name: str = "tiny-llama", seed: int = 0) -> Path:
    """Save a real, tiny, random-weight model (float32) with its tokenizer to ``dest``.

    Deterministic for a given ``seed``. Needs torch and transformers.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from lem.architectures import materialize

    dest = Path(dest)
    if (dest / "config.json").exists() and any(dest.glob("*.safetensors")):
        return dest
    materialize(name, dest)
    torch.manual_seed(seed)
    config = AutoConfig.from_pretrained(dest)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(dest)
    return dest


@contextlib.contextmanager
def registered(plugin: Any, name: str) -> Iterator[Any]:
    """Register ``plugin`` on the lem plugin manager for the duration of a ``with`` block."""
    from lem.plugins import get_plugin_manager

    pm = get_plugin_manager()
    pm.register(plugin, name=name)
    try:
        yield plugin
    finally:
        pm.unregister(name=name)

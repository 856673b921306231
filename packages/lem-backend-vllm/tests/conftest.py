"""Environment for running vLLM on a CPU-only machine (set before vLLM is imported)."""

from __future__ import annotations

import os
import tempfile

import pytest

# vLLM reads these when it starts an engine: a 1 GiB KV cache (unset it takes ~8 GiB), its compile
# cache in a temp dir, no hub, no usage reporting.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_CACHE_ROOT", tempfile.mkdtemp(prefix="lem-vllm-cache-"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")


def tiny_config(model: str, **tables: object) -> object:
    """An experiment on the tiny model, float32 (bf16 with enforce_eager dies with SIGILL on this CPU)."""
    from lem.configfile.loading import config_from_dict

    doc: dict[str, object] = {
        "model": model,
        "backend": "vllm",
        "precision": "float32",
        "generation": {"max_output_tokens": 8, "ignore_eos": True, "do_sample": False},
        "vllm": {"enforce_eager": True, "max_model_len": 256},
    }
    for key, value in tables.items():
        if isinstance(value, dict) and isinstance(doc.get(key), dict):
            doc[key] = {**doc[key], **value}  # type: ignore[dict-item]
        else:
            doc[key] = value
    return config_from_dict(doc)


@pytest.fixture(scope="session")
def make_config() -> object:
    """Builds tiny-model experiments: ``make_config(path, vllm={...}, traffic={...})``."""
    return tiny_config

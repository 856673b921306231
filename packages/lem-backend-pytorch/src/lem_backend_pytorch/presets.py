"""The PyTorch backend's presets (contributed through ``register_presets``)."""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    # Fast decoding on a GPU: transformers compiles the decode step over a static KV cache
    # (PLATFORM.md: ~106 tok/s vs ~16 eager for an 8B at batch 1 on an H100). Compile and
    # CUDA-graph capture happen in load_model and are reported in info["compile_seconds"].
    "pytorch-optimized": {
        "backend": "pytorch",
        "precision": "bfloat16",
        "pytorch": {
            "attn_implementation": "sdpa",
            "torch_compile": "reduce-overhead",
            "cache_implementation": "static",
        },
    },
    # Assisted (speculative) generation with a small draft model; transformers supports it at batch size 1.
    # The default draft suits random:llama-3.1-8b/70b (same vocabulary); with real weights set
    # pytorch.assistant_model to a real draft sharing the target's tokenizer (random drafts accept little).
    "pytorch-speculative": {
        "backend": "pytorch",
        "batching": {"batch_size": 1, "strategy": "static"},
        "pytorch": {"assistant_model": "random:llama-3.2-1b"},
    },
    # Runs anywhere (CPU included): float32, eager attention, no compile, dynamic cache.
    "pytorch-compatible": {
        "backend": "pytorch",
        "precision": "float32",
        "pytorch": {"device": "auto", "attn_implementation": "eager", "torch_compile": False, "use_cache": True},
    },
}

"""vLLM presets (partial experiments in TOML shape), contributed through ``register_presets``."""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    # Tokens per second: a large continuous batch, chunked prefill, everything submitted at once.
    "vllm-throughput": {
        "backend": "vllm",
        "dataset": {"num_prompts": 256},
        "generation": {"ignore_eos": True},
        "traffic": {"mode": "offline"},
        "vllm": {
            "max_num_seqs": 256,
            "max_num_batched_tokens": 8192,
            "enable_chunked_prefill": True,
            "enable_prefix_caching": True,
            "gpu_memory_utilization": 0.92,
        },
    },
    # Prompt-lookup (n-gram) speculation: needs no draft model, helps on repetitive text.
    "vllm-speculative": {
        "backend": "vllm",
        "vllm": {
            "speculative": {
                "method": "ngram",
                "num_speculative_tokens": 4,
                "prompt_lookup_max": 4,
                "prompt_lookup_min": 2,
            }
        },
    },
    # Fits where memory is short: fewer sequences, a share of the GPU, an 8-bit KV cache.
    "vllm-memory-efficient": {
        "backend": "vllm",
        "vllm": {
            "gpu_memory_utilization": 0.5,
            "max_num_seqs": 16,
            "kv_cache_dtype": "fp8",
            "enable_prefix_caching": True,
        },
    },
    # One request at a time with small prefill chunks: TTFT and ITL without queueing.
    "vllm-low-latency": {
        "backend": "vllm",
        "traffic": {"mode": "concurrency", "concurrency": 1},
        "vllm": {"max_num_seqs": 4, "max_num_batched_tokens": 2048},
    },
}

"""TensorRT-LLM presets (partial experiments in TOML shape), contributed through ``register_presets``."""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    # Tokens per second: a large in-flight batch, chunked prefill, prefix reuse, everything submitted at once.
    "tensorrt-throughput": {
        "backend": "tensorrt",
        "dataset": {"num_prompts": 256},
        "generation": {"ignore_eos": True},
        "traffic": {"mode": "offline"},
        "tensorrt": {
            "max_batch_size": 256,
            "max_num_tokens": 8192,
            "enable_chunked_context": True,
            "enable_block_reuse": True,
            "gpu_memory_utilization": 0.9,
            "cuda_graph_max_batch_size": 256,
            "cuda_graph_padding": True,
        },
    },
    # One request at a time on CUDA graphs of the small batch sizes: TTFT and ITL without queueing.
    "tensorrt-low-latency": {
        "backend": "tensorrt",
        "traffic": {"mode": "concurrency", "concurrency": 1},
        "tensorrt": {
            "max_batch_size": 4,
            "cuda_graph_batch_sizes": [1, 2, 4],
            "capacity_scheduler_policy": "GUARANTEED_NO_EVICT",
        },
    },
    # An fp8 checkpoint (quantized with NVIDIA ModelOpt) and an fp8 KV cache; needs compute capability >= 9.0.
    "tensorrt-fp8": {
        "backend": "tensorrt",
        "tensorrt": {"quantization": {"method": "fp8"}, "kv_cache_dtype": "fp8"},
    },
}

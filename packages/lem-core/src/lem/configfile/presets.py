"""Built-in presets. A preset is a partial experiment applied under the file.

Backends add their own through the ``register_presets`` hook.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lem.hookspecs import hookimpl

BUILTIN_PRESETS: dict[str, dict[str, Any]] = {
    # Seconds, not minutes: a smoke test of the whole pipeline.
    "quick-test": {
        "dataset": {"num_prompts": 4, "input_length": 32},
        "generation": {"max_output_tokens": 16},
        "measurement": {"warmup": "fixed", "warmup_requests": 1, "cycles": 1, "idle_seconds": 0.0},
    },
    # Numbers for a paper: fixed-length greedy generation, converged warm-up,
    # idle baseline, enough cycles for a confidence interval.
    "benchmark": {
        "dataset": {"num_prompts": 100},
        "generation": {"do_sample": False, "ignore_eos": True},
        "measurement": {
            "warmup": "cv",
            "warmup_cv_threshold": 0.05,
            "warmup_max_requests": 50,
            "cycles": 5,
            "idle_seconds": 10.0,
            # Windows of at least 5 s (ML.ENERGY's advice; a ~100 ms counter is then within ~2%),
            # and prefill measured apart from decode.
            "min_window_s": 5.0,
            "prefill_pass": True,
        },
    },
    # Maximum tokens per second: big sorted batches, everything at once.
    "throughput": {
        "dataset": {"num_prompts": 256},
        "generation": {"ignore_eos": True},
        "batching": {"batch_size": 64, "strategy": "sorted_dynamic"},
        "traffic": {"mode": "offline"},
        "measurement": {"cycles": 3},
    },
}


@hookimpl
def register_presets() -> Mapping[str, Mapping[str, Any]]:
    """The core's presets: ``quick-test``, ``benchmark``, ``throughput``."""
    return BUILTIN_PRESETS

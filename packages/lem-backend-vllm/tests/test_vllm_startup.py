"""An engine that fails inside vLLM's engine core process says why, in one line (real vLLM, CPU, real `lem run`).

vLLM itself raises "Engine core initialization failed. See root cause above" in this process, while the cause
is only in the engine core's log: lem reads it from there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

EXPERIMENT = """
model = "{model}"
backend = "vllm"
precision = "float32"
preset = "vllm-memory-efficient"

[dataset]
source = "synthetic"
num_prompts = 1
input_length = 8

[generation]
max_output_tokens = 4

[measurement]
warmup_requests = 0
cycles = 1
idle_seconds = 0.0
energy_meter = "none"

[vllm]
enforce_eager = true
max_model_len = 256
# On the CPU, without VLLM_CPU_KVCACHE_SPACE, this share of the machine's memory is the KV cache's budget:
# 1% cannot even cover what the engine process already uses.
gpu_memory_utilization = 0.01
"""


def test_memory_efficient_preset_without_memory_names_the_root_cause(tiny_llama: Path, tmp_path: Path) -> None:
    exp = tmp_path / "exp.toml"
    exp.write_text(EXPERIMENT.format(model=tiny_llama))
    env = {k: v for k, v in os.environ.items() if k != "VLLM_CPU_KVCACHE_SPACE"}
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "lem", "run", str(exp), "--out", str(out), "-q", "--no-report"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode != 0
    (failure,) = out.glob("*/*/failure.json")
    reason = json.loads(failure.read_text())["reason"]
    assert "\n" not in reason
    assert "root cause above" not in reason
    assert reason.startswith("BackendError: vLLM could not start the engine: "), reason
    # vLLM 0.32: "RuntimeError: Worker failed with error 'Available memory on node 0 (...) on kv cache ..."
    assert "Available memory" in reason and "kv cache" in reason, reason

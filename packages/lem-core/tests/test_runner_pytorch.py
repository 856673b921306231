"""`lem run` for real: the CLI, a worker process, the PyTorch backend and a tiny random-weight Llama on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lem.plugins import backend_names

pytestmark = pytest.mark.skipif("pytorch" not in backend_names(), reason="lem-backend-pytorch is not installed")

EXPERIMENT = """
model = "random:tiny-llama"
backend = "pytorch"
precision = "float32"

[dataset]
num_prompts = 4
input_length = 12

[generation]
max_output_tokens = 6
ignore_eos = true

[measurement]
cycles = 2
idle_seconds = 0
warmup_requests = 1

[batching]
batch_size = 2

[traffic]
mode = "poisson"
rate = 200.0
"""


def test_lem_run_end_to_end(tmp_path: Path) -> None:
    (tmp_path / "exp.toml").write_text(EXPERIMENT)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", "from lem.cli.main import main; main()", "run", "exp.toml", "--out", "res", "--json"],
        cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    (summary,) = doc["experiments"]
    assert summary["backend"] == "pytorch" and summary["cycles"] == 2
    figures = summary["figures"]
    assert figures["output_tokens_per_s"]["n"] == 2 and figures["output_tokens_per_s"]["mean"] > 0
    assert figures["ttft_s.p50"]["mean"] <= figures["e2e_s.p50"]["mean"]
    assert summary["methods"]["flops"] == "analytical"
    # No GPU here: energy is null with the reason, never 0.
    assert figures["energy.total_j"]["mean"] is None and summary["energy_reason"]
    exp_dir = Path(doc["results"]) if Path(doc["results"]).is_absolute() else tmp_path / doc["results"]
    cycle = json.loads((exp_dir / "exp" / "cycle-001.json").read_text())
    assert sum(r["events"][-1][1] > 0 for r in cycle["requests"]) == 4
    assert all(sum(n for _, n in r["events"]) == 6 for r in cycle["requests"])
    # Poisson arrivals: request i arrives at its seeded offset, and latencies count from there.
    assert [r["origin_ns"] for r in cycle["requests"]] == sorted(r["origin_ns"] for r in cycle["requests"])

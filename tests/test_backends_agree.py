"""Backends agree: the same prompts through pytorch, llama.cpp and vLLM give the same input counts and tokens.

One model, float32, greedy, a fixed output length (``ignore_eos``): the
built-in ``tiny-llama`` with its weights saved to a directory, so every
backend loads the very same weights (vLLM's ``random:`` models get vLLM's own
dummy weights, so a directory is the common ground). The built-in gives
diverse greedy output (30+ distinct tokens of 32; see
``lem.architectures.DIVERSE_INIT_STD``): agreement is not the prompt's last
token repeated. The top-two logit gap along every reference sequence is
checked first, so float32 noise between implementations cannot flip a token
and a failure here means a backend computed something else.

pytorch is the reference and llama.cpp (an f32 GGUF converted by lem) is
compared in the ``llamacpp`` nox session; vLLM (CPU build, in-process engine)
in the ``vllm`` session. A backend whose package is not installed in the
session is skipped. Quantized GGUFs (q8_0, q4_k_m, ...) are not compared:
their weights differ from the float32 model by design, so their tokens may
legitimately differ; only the f32 case proves the backends compute the same
function.

Each backend runs through the real ``lem run`` command (a subprocess, a
TOML file); the input token counts and generated ids are read from the cycle
files (``requests[i].input_tokens``, ``token_ids``, ``output_digest``) and the
prompt-set digest from the summary (``prompts.digest``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import tomli_w

OUTPUT_TOKENS = 32
NUM_PROMPTS = 6
#: Smallest top-two logit gap allowed along the reference outputs. Float32 implementations of the same model
#: differ by ~1e-5 in a logit here (llama.cpp with an f32 KV cache, measured); a gap 100x that cannot be
#: flipped by reordered sums.
MIN_LOGIT_GAP = 1e-3

BACKEND_TABLES: dict[str, dict[str, Any]] = {
    "pytorch": {},
    "llamacpp": {"llamacpp": {"quantization": "f32", "n_ctx": 512}},
    # In-process offline engine (starts in seconds); bf16 + enforce_eager dies with SIGILL on this CPU.
    "vllm": {"vllm": {"mode": "offline", "enforce_eager": True, "max_model_len": 512}},
}
PACKAGES = {"pytorch": "lem_backend_pytorch", "llamacpp": "lem_backend_llamacpp", "vllm": "lem_backend_vllm"}


def experiment(model: Path, backend: str) -> dict[str, Any]:
    """The experiment, in TOML shape: the same prompts and decoding for every backend."""
    return {
        "model": str(model),
        "backend": backend,
        "precision": "float32",
        "dataset": {"source": "builtin", "num_prompts": NUM_PROMPTS},
        "generation": {"max_output_tokens": OUTPUT_TOKENS, "ignore_eos": True, "do_sample": False},
        "measurement": {"cycles": 1, "warmup_requests": 1, "idle_seconds": 0, "energy_meter": "none"},
        **BACKEND_TABLES[backend],
    }


def _environment(backend: str) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if backend == "vllm":
        env.update(
            VLLM_ENABLE_V1_MULTIPROCESSING="0",
            VLLM_CPU_KVCACHE_SPACE="1",
            VLLM_CACHE_ROOT=tempfile.mkdtemp(prefix="lem-vllm-cache-"),
            VLLM_NO_USAGE_STATS="1",
        )
    return env


def run_backend(model_dir: Path, backend: str, where: Path) -> dict[str, Any]:
    """``lem run`` the experiment on ``backend``; what its cycle file and summary say about the workload."""
    where.mkdir(parents=True, exist_ok=True)
    (where / "exp.toml").write_text(tomli_w.dumps(experiment(model_dir, backend)))
    proc = subprocess.run(
        [sys.executable, "-m", "lem", "run", "exp.toml", "--out", "res", "--quiet", "--no-report"],
        cwd=where,
        capture_output=True,
        text=True,
        env=_environment(backend),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    (cycle_file,) = where.glob("res/*/*/cycle-001.json")
    requests = sorted(json.loads(cycle_file.read_text())["requests"], key=lambda r: r["id"])
    summary = json.loads((cycle_file.parent / "summary.json").read_text())
    return {
        "inputs": [r["input_tokens"] for r in requests],
        "outputs": [r["token_ids"] for r in requests],
        "digests": [r["output_digest"] for r in requests],
        "prompt_digest": summary["prompts"]["digest"],
    }


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in tiny-llama (its config and tokenizer) with seed-42 weights saved, float32."""
    pytest.importorskip("lem_backend_pytorch")
    from lem.testing import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("agree") / "tiny-llama", "tiny-llama", seed=42)


@pytest.fixture(scope="module")
def reference(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """pytorch's result, checked to be a fair judge: full length, diverse, far from any tie."""
    result = run_backend(model_dir, "pytorch", tmp_path_factory.mktemp("pytorch"))
    assert [len(out) for out in result["outputs"]] == [OUTPUT_TOKENS] * NUM_PROMPTS
    assert all(len(set(out)) >= 28 for out in result["outputs"]), [len(set(o)) for o in result["outputs"]]
    assert _min_logit_gap(model_dir, result) > MIN_LOGIT_GAP
    return result


def _min_logit_gap(model_dir: Path, result: dict[str, Any]) -> float:
    """The smallest top-1 minus top-2 logit over every generated position (transformers, float32).

    The prompts are rebuilt the way ``lem run`` built them (lem's prompt loader, the model's tokenizer).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lem.configfile.loading import config_from_dict
    from lem.prompts import load_prompts

    config = config_from_dict(experiment(model_dir, "pytorch"))
    tok = AutoTokenizer.from_pretrained(model_dir)
    prompts = load_prompts(config.dataset, tokenizer=tok, seed=config.seed, vocab_size=tok.vocab_size).prompts
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    gaps = []
    for p, n_input, out in zip(prompts, result["inputs"], result["outputs"], strict=True):
        ids = list(p.token_ids) if p.token_ids is not None else tok.encode(p.text)
        assert len(ids) == n_input
        with torch.no_grad():
            logits = model(torch.tensor([ids + out])).logits[0, len(ids) - 1 : -1]
        assert logits.argmax(-1).tolist() == out  # the reference really is greedy
        top = logits.topk(2).values
        gaps.append(float((top[:, 0] - top[:, 1]).min()))
    return min(gaps)


def _installed(backend: str) -> Any:
    # A mark, not a skip inside the test: the pytorch reference is not run for nothing.
    missing = importlib.util.find_spec(PACKAGES[backend]) is None
    reason = f"{PACKAGES[backend]} is not installed here (this case runs in the '{backend}' nox session)"
    return pytest.param(backend, marks=pytest.mark.skipif(missing, reason=reason))


@pytest.mark.parametrize("backend", [_installed("llamacpp"), _installed("vllm")])
def test_backend_generates_the_same_tokens_as_pytorch(
    backend: str, model_dir: Path, reference: dict[str, Any], tmp_path: Path
) -> None:
    result = run_backend(model_dir, backend, tmp_path)
    assert result["prompt_digest"] == reference["prompt_digest"]
    assert result["inputs"] == reference["inputs"]
    for i, (ours, theirs) in enumerate(zip(result["outputs"], reference["outputs"], strict=True)):
        assert len(ours) == OUTPUT_TOKENS
        diverged = next((j for j, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b), None)
        assert diverged is None, f"prompt {i}: {backend} diverged from pytorch at generated token {diverged}"
    assert result["digests"] == reference["digests"]

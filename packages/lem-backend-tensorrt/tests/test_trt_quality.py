"""``[quality]`` through the TensorRT-LLM backend, on the FAKE ``tensorrt_llm`` (``tests/fake``), not TensorRT-LLM.

TensorRT-LLM cannot run here (see ``tests/fake/tensorrt_llm/__init__.py``). The fake streams token ids only,
as TensorRT-LLM's ``CompletionOutput`` does (no text): lem-core decodes them with the tokenizer the backend
hands over (TensorRT-LLM's wrapper unwrapped to the Hugging Face tokenizer). The proof of
lem.testing.quality runs through the real ``lem`` command and a worker process, with the fake engine's
deterministic outputs standing in for the model's greedy answers (the same prompt gives the same ids).
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import pytest
from conftest import FAKE

from lem.testing.quality import prove_accuracy


@pytest.mark.parametrize("mode", ["offline", "concurrency"])
def test_accuracy_is_half_on_the_fake_tensorrt_llm(tiny_llama: Path, tmp_path: Path, mode: str) -> None:
    from transformers import AutoTokenizer

    traffic = {"mode": mode, **({"concurrency": 2} if mode == "concurrency" else {})}
    base = {"model": str(tiny_llama), "backend": "tensorrt", "precision": "bfloat16", "traffic": traffic}
    env = {
        "PYTHONPATH": os.pathsep.join([str(FAKE), os.environ.get("PYTHONPATH", "")]),
        "LEM_FAKE_TRTLLM": json.dumps({"step_s": 0.001}),
    }
    summary = prove_accuracy(base, tmp_path, env)
    assert summary["status"] == "ok"
    # output_text is the fake's ids decoded by the model's tokenizer (special tokens skipped), and the ids are
    # the fake's: token i of a request is 3 + (sum of its prompt ids + i) % 997.
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    (cycle,) = tmp_path.glob("scored/out/*/*/cycle-001.json")
    rows = json.loads(cycle.read_text())["requests"]
    assert len(rows) == 4
    for row in rows:
        ids = row["token_ids"]
        assert len(ids) == 6 and all(b - 3 == (a - 3 + 1) % 997 for a, b in itertools.pairwise(ids))
        assert row["output_text"] == tok.decode(ids, skip_special_tokens=True)
        assert row["output_text"].strip()

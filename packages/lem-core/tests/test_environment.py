"""Environment capture: facts present, versions from metadata, nothing heavy imported."""

from __future__ import annotations

import json
import subprocess
import sys

from lem.run.environment import capture


def test_capture_has_the_facts() -> None:
    env = capture(gpus=None, gpu_reason="no meter")
    assert env["python"]["version"].count(".") == 2
    assert env["cpu"]["logical_cores"] >= 1 and env["ram_bytes"] > 0
    assert "lem-core" in env["packages"]["lem"]
    assert "torch" in env["packages"]["libraries"] and "vllm" in env["packages"]["libraries"]
    assert env["gpus"] is None and env["gpus_reason"] == "no meter"
    assert "available" in env["cuda"]
    json.dumps(env)


def test_capture_imports_no_inference_library() -> None:
    code = (
        "import sys, lem.run.environment as e; e.capture();"
        "print([m for m in ('torch', 'transformers', 'vllm', 'pynvml', 'tensorrt_llm') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"

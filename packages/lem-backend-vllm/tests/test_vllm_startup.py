"""An engine that fails inside vLLM's engine core process says why, in one line (real vLLM, CPU).

vLLM itself raises "Engine core initialization failed. See root cause above" in this process, while the cause
is only in the engine core's log: lem reads it from there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psutil
import pytest

from lem.errors import BackendError
from lem_backend_vllm import plugin, processes


def test_engine_core_failure_names_its_root_cause(tiny_llama: Path, make_config: Any) -> None:
    # One KV-cache block cannot hold max_model_len (256) tokens: the engine core refuses, in its own process.
    config = make_config(str(tiny_llama), vllm={"extra": {"num_gpu_blocks_override": 1}})
    before = {p.pid for p in processes.children()}
    with pytest.raises(BackendError) as info:
        plugin.load_model(backend="vllm", config=config)
    message = str(info.value)
    assert "\n" not in message
    assert "root cause above" not in message
    assert message.startswith("vLLM could not start the engine: ValueError: ")
    assert "cache" in message  # vLLM 0.32: "No available memory for the cache blocks. ..."
    assert [p for p in processes.children() if p.pid not in before and p.status() != psutil.STATUS_ZOMBIE] == []

"""On a CUDA machine: bf16 streaming with random weights, devices reported.

Run with `pytest -m gpu` where vLLM and CUDA are installed.
"""

from __future__ import annotations

from typing import Any

import pytest

from lem.types import Request
from lem_backend_vllm import plugin


@pytest.mark.gpu
def test_stream_on_cuda(make_config: Any) -> None:
    from vllm.platforms import current_platform

    if not current_platform.is_cuda_alike():
        pytest.skip("needs a CUDA GPU")
    config = make_config("random:tiny-llama", precision="bfloat16", vllm={"gpu_memory_utilization": 0.3})
    model = plugin.load_model(backend="vllm", config=config)
    assert model is not None
    try:
        assert model.devices == (0,)
        stream = plugin.generate_stream(
            model=model, requests=[Request(0, "", 3, (5, 6, 7))], params=config.generation, config=config
        )
        assert stream is not None
        events = list(stream)
        assert sum(e.n_tokens for e in events) == config.generation.max_output_tokens
        assert sum(1 for e in events if e.n_tokens) >= 4
    finally:
        model.close()

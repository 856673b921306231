"""GPU tests of the PyTorch backend (marked ``gpu``: skipped in CI; run them with `nox -s gpu` on an NVIDIA machine)."""

from __future__ import annotations

import time
from typing import Any

import pytest
import torch
from pytorch_helpers import load, make_config, per_request, serve, token_requests

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

GEN = {"max_output_tokens": 8, "ignore_eos": True}


def test_random_8b_builds_on_the_gpu_in_seconds() -> None:
    start = time.perf_counter()
    model = load(make_config("random:llama-3.1-8b", precision="bfloat16", generation=GEN))
    built = time.perf_counter() - start
    try:
        assert model.devices == (0,)
        p = next(model.handle.model.parameters())
        assert p.device.type == "cuda" and p.dtype is torch.bfloat16
        assert 7.5e9 < model.num_parameters < 8.5e9
        assert built < 30  # ~1 s for the build itself; tokenizer and imports are the rest
        events = serve(model, token_requests(2), make_config("random:llama-3.1-8b", generation=GEN))
        assert sum(e.n_tokens for e in events) == 16
        model.synchronize()
    finally:
        before = torch.cuda.memory_allocated(0)
        model.close()
        assert torch.cuda.memory_allocated(0) < before / 2


def test_batch_streams_per_token_on_the_gpu() -> None:
    config = make_config("random:llama-3.2-1b", precision="bfloat16", generation=GEN, batching={"batch_size": 8})
    model = load(config)
    by_id = per_request(serve(model, token_requests(8), config))
    for evs in by_id.values():
        assert [e.n_tokens for e in evs[1:]] == [1] * 8
        assert len({e.t_ns for e in evs[1:]}) == 8
    model.close()


def test_compile_preset_compiles_in_load_model_and_reports_it() -> None:
    from lem.configfile.loading import deep_merge, presets

    doc = deep_merge(
        presets()["pytorch-optimized"],
        {"model": "random:llama-3.2-1b", "generation": GEN, "dataset": {"input_length": 16}},
    )
    from lem.configfile.loading import config_from_dict

    config = config_from_dict(doc)
    model = load(config)
    assert model.info["compile_seconds"] > 0
    start = time.perf_counter()
    events = serve(model, token_requests(1, length=16), config)
    assert time.perf_counter() - start < model.info["compile_seconds"]  # compiled already
    assert sum(e.n_tokens for e in events) == 8
    model.close()


def test_flash_attention_2_reaches_the_model_when_installed() -> None:
    pytest.importorskip("flash_attn")
    model = load(
        make_config("random:tiny-llama", precision="bfloat16", pytorch={"attn_implementation": "flash_attention_2"})
    )
    assert model.handle.model.config._attn_implementation == "flash_attention_2"


def test_bitsandbytes_4bit_when_installed(tiny_llama: Any) -> None:
    pytest.importorskip("bitsandbytes")
    model = load(make_config(str(tiny_llama), precision="bfloat16", quantization={"method": "bnb-4bit"}))
    assert getattr(model.handle.model, "is_loaded_in_4bit", False)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_device_map_auto_spreads_a_model_and_lists_every_gpu() -> None:
    config = make_config(
        "random:llama-3.1-8b",
        precision="bfloat16",
        generation=GEN,
        pytorch={"device_map": "auto", "max_memory": {"0": "10GiB", "1": "40GiB"}},
    )
    model = load(config)
    assert model.devices == (0, 1)
    assert len(set(model.handle.model.hf_device_map.values())) == 2
    assert sum(e.n_tokens for e in serve(model, token_requests(1), config)) == 8
    model.close()

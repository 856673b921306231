"""Analytical FLOPs: hand-computed for tiny Llama, cross-checked against real transformers models' weights."""

from __future__ import annotations

import pytest

from lem.architectures import config_dict
from lem.figures.flops import ANALYTICAL, PARAMETERS, cycle_flops, matmul_flops_per_token, request_flops, shapes


def test_tiny_llama_by_hand() -> None:
    s = shapes(config_dict("tiny-llama"))
    assert s is not None and s["gated"] and s["kv_heads"] == 2
    # per layer: q,o: 2·128·32·4 each; k,v: 2·128·32·2 each; gated MLP: 3 · 2·128·256
    per_token = 2 * (2 * 128 * 32 * (4 + 4 + 2 + 2) + 3 * 2 * 128 * 256)
    assert matmul_flops_per_token(s) == per_token
    attn = 4 * 2 * 4 * 32  # QK^T and AV per context position, all layers
    lm_head = 2 * 128 * 2048
    prefill, decode = request_flops(s, 3, 2)
    assert prefill == 3 * per_token + attn * (1 + 2 + 3) + lm_head
    assert decode == per_token + lm_head + attn * 4  # one decode step attending to 4 positions


def test_cycle_sums_requests_and_names_the_method() -> None:
    cfg = config_dict("tiny-llama")
    s = shapes(cfg)
    assert s is not None
    one = sum(request_flops(s, 5, 7))
    out = cycle_flops(cfg, None, [(5, 7), (5, 7)])
    assert out["method"] == ANALYTICAL and out["total"] == 2 * one
    assert out["prefill"] + out["decode"] == out["total"]


def test_fallbacks() -> None:
    out = cycle_flops({}, 1000, [(3, 2)])
    assert out["method"] == PARAMETERS and out["total"] == 2 * 1000 * 5 and out["reason"]
    none = cycle_flops({}, None, [(3, 2)])
    assert none["total"] is None and none["method"] is None and none["reason"]


def test_mixture_of_experts_counts_active_experts_only() -> None:
    dense = dict(config_dict("tiny-llama"))
    moe = {**dense, "num_local_experts": 8, "num_experts_per_tok": 2}
    d, m = shapes(dense), shapes(moe)
    assert d is not None and m is not None
    mlp = 2 * 3 * 128 * 256
    assert matmul_flops_per_token(m) - matmul_flops_per_token(d) == 2 * (mlp + 2 * 128 * 8)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_matmul_flops_are_twice_the_layer_weights(name: str) -> None:
    # Cross-check against the real model: every weight matrix inside the decoder layers is used once per token.
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = transformers.AutoConfig.for_model(**config_dict(name))
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(cfg)
    layers = model.model.layers if hasattr(model, "model") else model.transformer.h
    weights = sum(p.numel() for n, p in layers.named_parameters() if p.dim() == 2)
    s = shapes(config_dict(name))
    assert s is not None
    assert matmul_flops_per_token(s) == 2 * weights

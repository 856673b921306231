"""Forward-pass FLOPs of a decoder-only transformer, from its Hugging Face config.

Analytical count (the "model FLOPs" of the PaLM paper's MFU): a matmul of an
``m × k`` by ``k × n`` costs ``2mkn``. Per token and layer: the Q, K, V and O
projections (grouped-query aware), the MLP (gated or not; for a mixture of
experts, the active experts and the router), and causal attention over the
context so far (``QK^T`` and ``AV``: ``4 × heads × head_dim × context``).
The LM head is counted once per output token (backends compute logits only
for the last position). Embedding lookups, norms and softmax are left out.

Prefill processes the ``n`` input tokens and yields the first output token;
each of the other ``m - 1`` output tokens is one decode step. When the config
lacks the shapes, the fallback is ``2 × parameters × tokens`` and the result
says so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

ANALYTICAL = "analytical"
PARAMETERS = "2 × parameters × tokens"

# Architectures whose MLP is gated (gate, up, down) although their activation is not SiLU.
_GATED_TYPES = {"gemma", "gemma2", "gemma3", "gemma3_text", "phi3", "qwen2", "qwen3", "mistral", "mixtral", "llama"}


def _first(cfg: Mapping[str, Any], *names: str) -> Any:
    for name in names:
        if cfg.get(name) is not None:
            return cfg[name]
    return None


def shapes(model_config: Mapping[str, Any]) -> dict[str, Any] | None:
    """The shapes that FLOPs depend on, or ``None`` when the config lacks one."""
    cfg = model_config.get("text_config") or model_config
    hidden = _first(cfg, "hidden_size", "n_embd", "d_model")
    layers = _first(cfg, "num_hidden_layers", "n_layer", "num_layers")
    heads = _first(cfg, "num_attention_heads", "n_head")
    vocab = _first(cfg, "vocab_size")
    if not all(isinstance(v, int) and v > 0 for v in (hidden, layers, heads, vocab)):
        return None
    kv_heads = _first(cfg, "num_key_value_heads", "num_kv_heads") or heads
    head_dim = _first(cfg, "head_dim") or hidden // heads
    inter = _first(cfg, "intermediate_size", "n_inner", "ffn_dim") or 4 * hidden
    act = str(_first(cfg, "hidden_act", "activation_function") or "")
    gated = cfg.get("model_type") in _GATED_TYPES or act in ("silu", "swish", "swiglu")
    experts = _first(cfg, "num_local_experts", "num_experts", "n_routed_experts") or 0
    active = _first(cfg, "num_experts_per_tok", "moe_top_k") or 0
    expert_inter = _first(cfg, "moe_intermediate_size") or inter
    return {
        "hidden": hidden,
        "layers": layers,
        "heads": heads,
        "kv_heads": kv_heads,
        "head_dim": head_dim,
        "intermediate": inter,
        "gated": gated,
        "vocab": vocab,
        "experts": experts,
        "active_experts": active,
        "expert_intermediate": expert_inter,
    }


def matmul_flops_per_token(s: Mapping[str, Any]) -> int:
    """FLOPs of one token through every layer's weights (attention scores and the LM head excluded)."""
    h, hd = s["hidden"], s["head_dim"]
    attn = 2 * h * hd * (2 * s["heads"] + 2 * s["kv_heads"])  # q and o; k and v
    mats = 3 if s["gated"] else 2
    if s["experts"] and s["active_experts"]:
        mlp = 2 * mats * h * s["expert_intermediate"] * s["active_experts"] + 2 * h * s["experts"]
    else:
        mlp = 2 * mats * h * s["intermediate"]
    return int(s["layers"] * (attn + mlp))


def request_flops(s: Mapping[str, Any], input_tokens: int, output_tokens: int) -> tuple[int, int]:
    """``(prefill, decode)`` FLOPs of one request with these shapes."""
    per_token = matmul_flops_per_token(s)
    attn_per_ctx = 4 * s["layers"] * s["heads"] * s["head_dim"]  # QK^T and AV, per context position
    lm_head = 2 * s["hidden"] * s["vocab"]
    n, m = input_tokens, output_tokens
    # Causal prefill: position i attends to i + 1 positions.
    prefill = n * per_token + attn_per_ctx * n * (n + 1) // 2 + (lm_head if m > 0 else 0)
    steps = max(m - 1, 0)
    # Decode step k (1..m-1) attends to n + k positions.
    decode = steps * (per_token + lm_head) + attn_per_ctx * (steps * n + steps * (steps + 1) // 2)
    return prefill, decode


def cycle_flops(
    model_config: Mapping[str, Any], num_parameters: int | None, requests: Sequence[tuple[int, int]]
) -> dict[str, Any]:
    """FLOPs of a cycle's ``(input tokens, output tokens)`` requests: prefill, decode, total and the method."""
    s = shapes(model_config)
    if s is not None:
        pre = dec = 0
        for n, m in requests:
            p, d = request_flops(s, n, m)
            pre, dec = pre + p, dec + d
        return {"method": ANALYTICAL, "prefill": pre, "decode": dec, "total": pre + dec, "reason": None}
    if num_parameters:
        pre = sum(2 * num_parameters * n for n, _ in requests)
        dec = sum(2 * num_parameters * m for _, m in requests)
        return {
            "method": PARAMETERS,
            "prefill": pre,
            "decode": dec,
            "total": pre + dec,
            "reason": "model config lacks the shapes for an analytical count",
        }
    return {
        "method": None,
        "prefill": None,
        "decode": None,
        "total": None,
        "reason": "neither the model's architecture nor its parameter count is known",
    }

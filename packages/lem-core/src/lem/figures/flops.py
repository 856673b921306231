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

import math
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


# --- bytes moved per decode step ------------------------------------------------------------------------
#
# From the same shapes as the FLOPs. A decode step reads every weight matrix of every layer once (a mixture of
# experts: the experts some sequence of the batch routes to, expected under uniform routing) and the LM head
# (tied or not, the vocabulary matrix is read whole), and reads the KV cache of every sequence in the batch
# (``n + k`` positions at decode step k of a request with ``n`` input tokens: the ``n + k - 1`` cached ones
# read, its own written). Left out: embedding lookups (one row per sequence), norms and biases, activations,
# the sampling step, a speculative draft model. Under tensor parallelism each shard reads ``1 / tp`` of it.

#: GGUF (ggml) tensor types -> (elements per block, bytes per block), as ggml defines them.
GGUF_BLOCKS: dict[str, tuple[int, int]] = {
    "F64": (1, 8),
    "F32": (1, 4),
    "F16": (1, 2),
    "BF16": (1, 2),
    "I8": (1, 1),
    "I16": (1, 2),
    "I32": (1, 4),
    "I64": (1, 8),
    "Q4_0": (32, 18),
    "Q4_1": (32, 20),
    "Q5_0": (32, 22),
    "Q5_1": (32, 24),
    "Q8_0": (32, 34),
    "Q8_1": (32, 40),
    "Q2_K": (256, 84),
    "Q3_K": (256, 110),
    "Q4_K": (256, 144),
    "Q5_K": (256, 176),
    "Q6_K": (256, 210),
    "Q8_K": (256, 292),
    "IQ1_S": (256, 50),
    "IQ1_M": (256, 56),
    "IQ2_XXS": (256, 66),
    "IQ2_XS": (256, 74),
    "IQ2_S": (256, 82),
    "IQ3_XXS": (256, 98),
    "IQ3_S": (256, 110),
    "IQ4_NL": (32, 18),
    "IQ4_XS": (256, 136),
    "TQ1_0": (256, 54),
    "TQ2_0": (256, 66),
    "MXFP4": (32, 17),
}

_PRECISION_BYTES = {"float32": 4.0, "float16": 2.0, "bfloat16": 2.0}


def gguf_bytes(elements: Mapping[str, int]) -> int | None:
    """Bytes of GGUF tensors given ``{type: elements}``; ``None`` when a type is not in :data:`GGUF_BLOCKS`."""
    total = 0
    for kind, n in elements.items():
        block = GGUF_BLOCKS.get(kind.upper())
        if block is None:
            return None
        total += -(-int(n) // block[0]) * block[1]
    return total


def weight_widths(
    precision: str,
    quantization: str,
    model_config: Mapping[str, Any],
    bnb_double_quant: bool = False,
) -> dict[str, Any]:
    """Bytes per weight of the layers' matrices (``layers``), of the LM head (``head``) and per KV element
    (``kv``), with the basis: quantized matrices at their stored width with their scales; the LM head and the
    KV cache stay at the experiment's precision (bitsandbytes, GPTQ, AWQ and fp8 leave the LM head alone)."""
    full = _PRECISION_BYTES.get(precision, 2.0)
    layers, basis = full, f"{precision}: {full:g} bytes per weight"
    if quantization == "bnb-8bit":
        layers, basis = 1.0, "bitsandbytes 8-bit: 1 byte per weight (per-row scales left out)"
    elif quantization == "bnb-4bit":
        # 4 bits per weight and one absmax per 64-weight block: fp32, or with double quantization an 8-bit one
        # plus an fp32 per 256 blocks.
        scale = (1 + 4 / 256) / 64 if bnb_double_quant else 4 / 64
        layers, basis = 0.5 + scale, f"bitsandbytes 4-bit: 0.5 byte per weight + {scale:.4g} of block scales"
    elif quantization == "fp8":
        layers, basis = 1.0, "fp8: 1 byte per weight (per-tensor scales left out)"
    elif quantization in ("gptq", "awq"):
        q = model_config.get("quantization_config") or {}
        bits = int(q.get("bits") or q.get("w_bit") or 4)
        group = int(q.get("group_size") or q.get("q_group_size") or 128)
        group = group if group > 0 else int(model_config.get("hidden_size") or 4096)
        # A float16 scale and a packed zero point per group.
        layers = bits / 8 + (2 + bits / 8) / group
        basis = f"{quantization} {bits}-bit, group {group}: {layers:.4g} bytes per weight (scales and zeros)"
    return {"layers": layers, "head": full, "kv": full, "basis": basis}


def weight_bytes_per_step(s: Mapping[str, Any], widths: Mapping[str, Any], batch: float = 1.0) -> float:
    """Bytes of weights one decode step of ``batch`` sequences reads (all shards together)."""
    h, hd = s["hidden"], s["head_dim"]
    attn = h * hd * (2 * s["heads"] + 2 * s["kv_heads"])
    mats = 3 if s["gated"] else 2
    if s["experts"] and s["active_experts"]:
        e, k = s["experts"], s["active_experts"]
        hit = e * (1 - (1 - k / e) ** max(batch, 1.0))  # distinct experts a batch touches, uniform routing
        mlp = mats * h * s["expert_intermediate"] * hit + h * e
    else:
        mlp = mats * h * s["intermediate"]
    return float(s["layers"] * (attn + mlp) * widths["layers"] + h * s["vocab"] * widths["head"])


def kv_bytes_per_position(s: Mapping[str, Any], widths: Mapping[str, Any]) -> float:
    """Bytes of KV cache of one context position (keys and values, every layer)."""
    return float(2 * s["layers"] * s["kv_heads"] * s["head_dim"] * widths["kv"])


def union_s(intervals: Sequence[tuple[float, float]]) -> float:
    """Total length of the union of ``(start, end)`` intervals."""
    total, end = 0.0, -math.inf
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total

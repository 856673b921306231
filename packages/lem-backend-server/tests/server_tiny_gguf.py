"""Convert lem's tiny random Llama (a Hugging Face directory) into a GGUF file for llama.cpp's server.

A test helper: the ``gguf`` package writes the file; tensor names and the q/k row order follow
llama.cpp's own Llama conversion (GGML's rotary embedding pairs adjacent rows, Hugging Face's pairs
the two halves of each head, so q and k are permuted). The byte-level BPE tokenizer is stored as
llama.cpp's ``gpt2`` tokenizer model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _permute(w: Any, n_head: int) -> Any:
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def convert(model_dir: Path, dest: Path) -> Path:
    """Write ``dest`` (a float32 GGUF) from the tiny Llama in ``model_dir``; returns ``dest``."""
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    cfg = json.loads((model_dir / "config.json").read_text())
    tok = json.loads((model_dir / "tokenizer.json").read_text())
    weights = load_file(str(model_dir / "model.safetensors"))
    n_head, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // n_head

    w = gguf.GGUFWriter(str(dest), "llama")
    w.add_name("lem-tiny-llama")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(float((cfg.get("rope_parameters") or {}).get("rope_theta", cfg.get("rope_theta", 10000.0))))
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_vocab_size(cfg["vocab_size"])
    w.add_file_type(gguf.LlamaFileType.ALL_F32)

    vocab = tok["model"]["vocab"]
    tokens = [""] * cfg["vocab_size"]
    for text, i in vocab.items():
        tokens[i] = text
    special = {t["id"] for t in tok["added_tokens"] if t.get("special")}
    types = [gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL for i in range(len(tokens))]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(cfg["bos_token_id"])
    w.add_eos_token_id(cfg["eos_token_id"])
    w.add_pad_token_id(cfg.get("pad_token_id") or 0)
    w.add_add_bos_token(False)

    def put(name: str, array: Any) -> None:
        w.add_tensor(name, np.ascontiguousarray(array, dtype=np.float32))

    put("token_embd.weight", weights["model.embed_tokens.weight"])
    put("output_norm.weight", weights["model.norm.weight"])
    put("output.weight", weights.get("lm_head.weight", weights["model.embed_tokens.weight"]))
    for b in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{b}."
        put(f"blk.{b}.attn_norm.weight", weights[p + "input_layernorm.weight"])
        put(f"blk.{b}.attn_q.weight", _permute(weights[p + "self_attn.q_proj.weight"], n_head))
        put(f"blk.{b}.attn_k.weight", _permute(weights[p + "self_attn.k_proj.weight"], n_kv))
        put(f"blk.{b}.attn_v.weight", weights[p + "self_attn.v_proj.weight"])
        put(f"blk.{b}.attn_output.weight", weights[p + "self_attn.o_proj.weight"])
        put(f"blk.{b}.ffn_norm.weight", weights[p + "post_attention_layernorm.weight"])
        put(f"blk.{b}.ffn_gate.weight", weights[p + "mlp.gate_proj.weight"])
        put(f"blk.{b}.ffn_up.weight", weights[p + "mlp.up_proj.weight"])
        put(f"blk.{b}.ffn_down.weight", weights[p + "mlp.down_proj.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dest

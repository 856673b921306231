"""Hugging Face models and ``random:`` built-ins to GGUF, cached by digest.

llama.cpp reads only GGUF files. A ``.gguf`` model is used as is; a Hugging
Face directory or id, or a ``random:`` built-in, is converted here at the
requested ``[llamacpp] quantization``:

1. the model is built with transformers in float32 (``from_pretrained``, or
   ``from_config`` after ``torch.manual_seed(seed)`` for random weights: the
   same weights the pytorch backend builds for the same seed);
2. its tensors are written with the ``gguf`` package (llama.cpp's own
   gguf-py, on PyPI) as f32, f16, bf16 or q8_0, following the tensor layout of
   llama.cpp's ``convert_hf_to_gguf.py`` (which llama-cpp-python vendors in its
   sdist but does not install);
3. other types (q4_k_m, q5_k_m, q6_k, ...) are made from the f32 file by
   llama.cpp's own quantizer (``llama_cpp.llama_model_quantize``).

The file is cached under ``<cache>/gguf/`` by a digest of everything that
decides its bytes: model id or path, revision, config, a digest of the weights
(their files, or the seed for random weights), the quantization and
:data:`CONVERTER_VERSION`. Conversion time is measured apart from load.

Only the Llama family (``LlamaForCausalLM``, ``MistralForCausalLM``) with a
byte-level BPE tokenizer is converted here; anything else is an error that
says to convert with llama.cpp and pass the ``.gguf`` file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from lem import architectures
from lem.config import ExperimentConfig
from lem.errors import BackendError

#: Bumped whenever the bytes written for the same input change.
CONVERTER_VERSION = "lem-gguf-1"

#: Types written directly with the gguf package (name -> gguf.LlamaFileType member).
DIRECT_TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16", "q8_0": "MOSTLY_Q8_0"}

#: Types made by llama.cpp's quantizer from the f32 file (name -> llama_cpp LLAMA_FTYPE_* constant).
QUANTIZED_TYPES = {
    "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
    "q4_1": "LLAMA_FTYPE_MOSTLY_Q4_1",
    "q5_0": "LLAMA_FTYPE_MOSTLY_Q5_0",
    "q5_1": "LLAMA_FTYPE_MOSTLY_Q5_1",
    "q2_k": "LLAMA_FTYPE_MOSTLY_Q2_K",
    "q3_k_s": "LLAMA_FTYPE_MOSTLY_Q3_K_S",
    "q3_k_m": "LLAMA_FTYPE_MOSTLY_Q3_K_M",
    "q3_k_l": "LLAMA_FTYPE_MOSTLY_Q3_K_L",
    "q4_k_s": "LLAMA_FTYPE_MOSTLY_Q4_K_S",
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "q5_k_s": "LLAMA_FTYPE_MOSTLY_Q5_K_S",
    "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K",
    "iq4_nl": "LLAMA_FTYPE_MOSTLY_IQ4_NL",
    "iq4_xs": "LLAMA_FTYPE_MOSTLY_IQ4_XS",
}
QUANTIZATIONS = (*DIRECT_TYPES, *QUANTIZED_TYPES)

#: ``precision`` -> the GGUF type used when ``[llamacpp] quantization`` is not set.
PRECISION_TYPES = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}

ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")


@attrs.frozen
class Source:
    """Where a model comes from: an HF directory to read, and whether its weights are random."""

    model: str
    directory: Path
    random_weights: bool
    revision: str | None


@attrs.frozen
class Converted:
    """A GGUF file for the experiment, and how it was obtained (recorded in ``LoadedModel.info``)."""

    path: Path
    #: The HF directory the model came from (its tokenizer is used), ``None`` for a ``.gguf`` model.
    source: Source | None
    quantization: str | None
    digest: str | None
    cached: bool
    #: Seconds spent converting (and quantizing) now; 0.0 when the cache had it, ``None`` for a ``.gguf`` model.
    seconds: float | None


def is_gguf(model: str) -> bool:
    """True when ``model`` names a GGUF file (by its suffix)."""
    return model.lower().endswith(".gguf")


def cache_root(configured: str | None) -> Path:
    """``[llamacpp] cache_dir``, else ``$LEM_CACHE_DIR``, else ``$XDG_CACHE_HOME/lem`` or ``~/.cache/lem``."""
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("LEM_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "lem"
    )
    return Path(base)


def quantization_for(config: ExperimentConfig) -> str:
    """``[llamacpp] quantization``, or the type ``precision`` names."""
    chosen = config.options_for("llamacpp").get("quantization")
    return str(chosen) if chosen is not None else PRECISION_TYPES[config.precision]


def source_for(config: ExperimentConfig) -> Source:
    """The Hugging Face directory behind ``config.model`` (a built-in is materialized; a hub id downloaded)."""
    model = config.model
    if architectures.is_builtin(model):
        return Source(model, Path(architectures.resolve(model)[0]), True, None)
    random_weights = config.load_format == "random"
    if Path(model).is_dir():
        return Source(model, Path(model), random_weights, config.revision)
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.model", "*.txt"] if random_weights else ["*.json", "*.model", "*.txt", "*.safetensors"]
    try:
        local = snapshot_download(model, revision=config.revision, allow_patterns=patterns)
    except Exception as exc:  # the hub raises many kinds; the user needs one line
        raise BackendError(
            f"model = {model!r}: not a .gguf file, a local directory or a reachable Hugging Face id ({exc})"
        ) from None
    return Source(model, Path(local), random_weights, config.revision)


def _weights_digest(source: Source, seed: int) -> str:
    if source.random_weights:
        import torch

        # from_config draws from torch's generator: the seed and torch's version fix the weights.
        return f"random seed={seed} torch={torch.__version__}"
    h = hashlib.sha256()
    files = sorted(source.directory.glob("*.safetensors")) or sorted(source.directory.glob("*.bin"))
    if not files:
        raise BackendError(f"model = {source.model!r}: no weights (*.safetensors or *.bin) in {source.directory}")
    for f in files:
        h.update(f.name.encode())
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 24), b""):
                h.update(block)
    return h.hexdigest()


def digest(source: Source, quantization: str, seed: int) -> str:
    """The cache key of the GGUF for ``source`` at ``quantization``."""
    parts = {
        "model": source.model,
        "revision": source.revision,
        "config": json.loads((source.directory / "config.json").read_text()),
        "weights": _weights_digest(source, seed),
        "quantization": quantization,
        "converter": CONVERTER_VERSION,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def gguf_for(config: ExperimentConfig) -> Converted:
    """The GGUF file to load for ``config`` (converting and caching it if needed)."""
    if is_gguf(config.model):
        path = Path(config.model).expanduser()
        if not path.is_file():
            raise BackendError(f"model = {config.model!r}: no such GGUF file")
        return Converted(path, None, None, None, cached=False, seconds=None)
    quant = quantization_for(config)
    if quant not in QUANTIZATIONS:
        raise BackendError(f"llamacpp.quantization = {quant!r}: unknown type (known: {', '.join(QUANTIZATIONS)})")
    source = source_for(config)
    key = digest(source, quant, config.seed)
    root = cache_root(config.options_for("llamacpp").get("cache_dir")) / "gguf"
    target = root / f"{Path(source.model).name.replace(':', '-')}-{key[:16]}-{quant}.gguf"
    if target.is_file():
        return Converted(target, source, quant, key, cached=True, seconds=0.0)
    t0 = time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)
    if quant in DIRECT_TYPES:
        write_gguf(source, target, quant, config.seed)
    else:
        f32 = gguf_for(_with_quantization(config, "f32")).path
        quantize(f32, target, quant)
    return Converted(target, source, quant, key, cached=False, seconds=time.perf_counter() - t0)


def _with_quantization(config: ExperimentConfig, quant: str) -> ExperimentConfig:
    opts = dict(config.backend_options)
    opts["llamacpp"] = {**config.options_for("llamacpp"), "quantization": quant}
    return attrs.evolve(config, backend_options=opts)


def quantize(src: Path, dest: Path, quant: str) -> None:
    """llama.cpp's quantizer: ``src`` (f32 GGUF) to ``dest`` at ``quant``."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANTIZED_TYPES[quant])
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    status = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params)
    if status != 0:
        tmp.unlink(missing_ok=True)
        raise BackendError(f"llamacpp.quantization = {quant!r}: llama.cpp's quantizer failed (status {status})")
    os.replace(tmp, dest)


def _build(source: Source, seed: int) -> Any:
    try:
        import torch
    except ImportError:
        raise BackendError(
            "converting a Hugging Face or random: model to GGUF needs torch "
            "(pip install 'lem-backend-llamacpp[convert]'), or pass a .gguf file as model"
        ) from None
    from transformers import AutoConfig, AutoModelForCausalLM

    hf_config = AutoConfig.from_pretrained(source.directory)
    found = list(getattr(hf_config, "architectures", None) or [])
    if not set(found) & set(ARCHITECTURES):
        raise BackendError(
            f"model = {source.model!r}: lem converts only {', '.join(ARCHITECTURES)} to GGUF (this is "
            f"{', '.join(found) or 'unknown'}); convert it with llama.cpp's convert_hf_to_gguf.py and pass the .gguf"
        )
    if source.random_weights:
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32)
    return AutoModelForCausalLM.from_pretrained(source.directory, dtype=torch.float32)


def _permute(w: Any, n_head: int) -> Any:
    # HF stores rotary q/k rows as two halves; llama.cpp wants them interleaved (convert_hf_to_gguf's permute).
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _rope_freqs(cfg: Any, head_dim: int) -> Any:
    """llama3 rope scaling as the per-frequency factors tensor llama.cpp reads (``rope_freqs.weight``)."""
    import numpy as np

    rs = cfg.rope_scaling
    factor, low, high = rs["factor"], rs.get("low_freq_factor", 1.0), rs.get("high_freq_factor", 4.0)
    old = rs.get("original_max_position_embeddings", 8192)
    freqs = 1.0 / (cfg.rope_theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    out = []
    for f in freqs:
        wavelen = 2 * math.pi / f
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


def _tokenizer_kv(writer: Any, directory: Path, vocab_size: int) -> None:
    import gguf
    from transformers import AutoTokenizer

    spec = json.loads((directory / "tokenizer.json").read_text())
    model = spec.get("model", {})
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise BackendError(
            f"{directory}: lem writes only byte-level BPE tokenizers to GGUF; convert the model with "
            "llama.cpp's convert_hf_to_gguf.py and pass the .gguf"
        )
    tok = AutoTokenizer.from_pretrained(directory)
    by_id = {i: t for t, i in tok.get_vocab().items()}
    special = set(tok.all_special_ids)
    tokens, types = [], []
    for i in range(vocab_size):
        if i in by_id:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL)
        else:  # embedding rows beyond the tokenizer (padded vocabularies)
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    # Only used when llama.cpp tokenizes text itself; lem feeds token ids made by the HF tokenizer.
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for name, value in (("bos", tok.bos_token_id), ("eos", tok.eos_token_id), ("pad", tok.pad_token_id)):
        if value is not None:
            getattr(writer, f"add_{name}_token_id")(int(value))
    if tok.unk_token_id is not None:
        writer.add_unk_token_id(int(tok.unk_token_id))
    writer.add_add_bos_token(bool(tok("a")["input_ids"][:1] == [tok.bos_token_id]))
    if getattr(tok, "chat_template", None):
        writer.add_chat_template(tok.chat_template)


#: HF Llama parameter name (after ``model.layers.N.``) -> GGUF tensor name (after ``blk.N.``).
LAYER_TENSORS = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
GLOBAL_TENSORS = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


def _gguf_name(name: str) -> str:
    if name in GLOBAL_TENSORS:
        return GLOBAL_TENSORS[name]
    prefix, _, rest = name.partition(".layers.")
    block, _, param = rest.partition(".")
    if prefix != "model" or param not in LAYER_TENSORS:
        raise BackendError(f"GGUF conversion: unexpected Llama tensor {name!r}")
    return f"blk.{block}.{LAYER_TENSORS[param]}"


def write_gguf(source: Source, dest: Path, quant: str, seed: int) -> None:
    """Build the model and write it to ``dest`` as a GGUF of type ``quant`` (f32, f16, bf16 or q8_0)."""
    import gguf
    import numpy as np

    model = _build(source, seed)
    cfg = model.config
    n_head, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_head
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    writer = gguf.GGUFWriter(str(tmp), "llama")
    writer.add_name(Path(source.model).name)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_freq_base(float(getattr(cfg, "rope_theta", None) or 10000.0))
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_rope_dimension_count(head_dim)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_file_type(getattr(gguf.LlamaFileType, DIRECT_TYPES[quant]))
    rope_scaling = getattr(cfg, "rope_scaling", None) or {}
    rope_type = rope_scaling.get("rope_type") or rope_scaling.get("type")
    if rope_type == "llama3":
        writer.add_tensor("rope_freqs.weight", _rope_freqs(cfg, head_dim))
    elif rope_type == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(rope_scaling["factor"])
    elif rope_type not in (None, "default"):
        raise BackendError(f"model = {source.model!r}: rope scaling {rope_type!r} is not converted by lem")
    _tokenizer_kv(writer, source.directory, cfg.vocab_size)
    qtype = {"f16": gguf.GGMLQuantizationType.F16, "bf16": gguf.GGMLQuantizationType.BF16}.get(
        quant, gguf.GGMLQuantizationType.Q8_0
    )
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue  # llama.cpp uses token_embd for the output when output.weight is absent
        data = tensor.detach().to("cpu").float().numpy()
        if name.endswith("q_proj.weight"):
            data = _permute(data, n_head)
        elif name.endswith("k_proj.weight"):
            data = _permute(data, n_kv)
        out = _gguf_name(name)
        # Norms (1-D) stay f32, as llama.cpp's converter keeps them.
        if quant == "f32" or data.ndim == 1:
            writer.add_tensor(out, np.ascontiguousarray(data, dtype=np.float32))
        elif quant == "f16":
            writer.add_tensor(out, data.astype(np.float16))
        else:
            packed = gguf.quants.quantize(data, qtype)
            writer.add_tensor(out, packed, raw_shape=packed.shape, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, dest)


#: GGUF tensor types that are not quantized (norms, and f32/f16 files): never a fallback.
_PLAIN_TYPES = ("F32", "F16", "BF16", "F64")


def tensor_types(path: Path) -> dict[str, int]:
    """GGUF tensor type -> how many tensors of ``path`` have it (read from the file's header)."""
    from gguf import GGUFReader

    counts: dict[str, int] = {}
    for tensor in GGUFReader(str(path)).tensors:
        name = tensor.tensor_type.name
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def tensor_elements(path: Path) -> tuple[dict[str, int], dict[str, Any] | None]:
    """``({type: elements}, token embedding)`` of ``path``'s tensors: what lem-core counts the bytes a decode
    step reads from (lem.figures.flops). The token embedding is ``{type, elements, tied}``, tied when the file
    has no ``output.weight`` (the embedding is then the output projection), ``None`` when absent."""
    from gguf import GGUFReader

    elements: dict[str, int] = {}
    embd = None
    tensors = GGUFReader(str(path)).tensors
    names = {t.name for t in tensors}
    for tensor in tensors:
        kind = tensor.tensor_type.name
        elements[kind] = elements.get(kind, 0) + int(tensor.n_elements)
        if tensor.name == "token_embd.weight":
            embd = {"type": kind, "elements": int(tensor.n_elements), "tied": "output.weight" not in names}
    return dict(sorted(elements.items())), embd


def fallback_tensors(quantization: str | None, types: Mapping[str, int]) -> int:
    """How many tensors a K-quant (``q4_k_m``...) did not quantize to a K type: llama.cpp falls back (to q5_0,
    q8_0...) for tensors whose rows are not a multiple of its 256-wide super-block."""
    if quantization is None or "_k" not in quantization:
        return 0
    return sum(n for name, n in types.items() if not name.endswith("_K") and name not in _PLAIN_TYPES)

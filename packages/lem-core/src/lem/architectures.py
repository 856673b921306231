"""Built-in model architectures, usable offline as ``model = "random:<name>"``.

A ``random:`` model is an architecture with random weights: energy and
throughput depend on shapes, not on weight values, so benchmarks need not
download weights (use ``generation.ignore_eos`` for fixed-length outputs).
:func:`materialize` writes a model directory (``config.json`` and a
tokenizer, no weights) that any backend can load with random weights.

The tokenizer is a byte-level BPE trained here, offline and
deterministically, on generated English-like text; it is *not* the real
model's tokenizer, and results record that.

transformers and tokenizers are imported lazily: lem-core does not depend on
them, the backends that call this do.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from lem.errors import BackendError

PREFIX = "random:"
TOKENIZER_VOCAB = 2048

_LLAMA = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_act": "silu",
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
    "attention_bias": False,
    "mlp_bias": False,
}

#: Weight init std of the tiny models. With transformers' default (0.02) and tied
#: embeddings a tiny model's greedy output is the prompt's last token repeated,
#: so any two backends "agree" trivially. Untied embeddings and a larger std
#: make a 32-token greedy sequence ~30 distinct tokens with top-two logit gaps
#: far above float32 noise: a real test that backends compute the same thing.
DIVERSE_INIT_STD = 0.2

#: name -> (description, Hugging Face config dict). ``vocab_size`` of the tiny
#: models is the trained tokenizer's; the large ones keep the real vocabulary size.
ARCHITECTURES: dict[str, tuple[str, dict[str, Any]]] = {
    "tiny-llama": (
        "Llama, 2 layers, hidden 128, 4 heads (2 KV), ~0.8M parameters, diverse greedy output: tests and quickstarts",
        {
            **_LLAMA,
            "hidden_size": 128,
            "intermediate_size": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 32,
            "max_position_embeddings": 2048,
            "rope_theta": 10000.0,
            "vocab_size": TOKENIZER_VOCAB,
            "initializer_range": DIVERSE_INIT_STD,
        },
    ),
    "tiny-gpt2": (
        "GPT-2, 2 layers, hidden 128, 4 heads, diverse greedy output: tests of a second architecture",
        {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "n_embd": 128,
            "n_layer": 2,
            "n_head": 4,
            "n_positions": 1024,
            "n_ctx": 1024,
            "vocab_size": TOKENIZER_VOCAB,
            "tie_word_embeddings": False,
            "initializer_range": DIVERSE_INIT_STD,
        },
    ),
    "llama-3.1-8b": (
        "Llama-3.1-8B shape (32 layers, hidden 4096, GQA 32/8), random weights",
        {
            **_LLAMA,
            "hidden_size": 4096,
            "intermediate_size": 14336,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "head_dim": 128,
            "max_position_embeddings": 131072,
            "rope_theta": 500000.0,
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            },
            "vocab_size": 128256,
        },
    ),
    "llama-3.2-1b": (
        "Llama-3.2-1B shape (16 layers, hidden 2048, GQA 32/8), random weights: a draft model for llama-3.1-*",
        {
            **_LLAMA,
            "hidden_size": 2048,
            "intermediate_size": 8192,
            "num_hidden_layers": 16,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "head_dim": 64,
            "max_position_embeddings": 131072,
            "rope_theta": 500000.0,
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 32.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            },
            "vocab_size": 128256,
            "tie_word_embeddings": True,
        },
    ),
    "llama-3.1-70b": (
        "Llama-3.1-70B shape (80 layers, hidden 8192, GQA 64/8), random weights",
        {
            **_LLAMA,
            "hidden_size": 8192,
            "intermediate_size": 28672,
            "num_hidden_layers": 80,
            "num_attention_heads": 64,
            "num_key_value_heads": 8,
            "head_dim": 128,
            "max_position_embeddings": 131072,
            "rope_theta": 500000.0,
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            },
            "vocab_size": 128256,
        },
    ),
}


def is_builtin(model: str) -> bool:
    """True for ``random:<name>`` model names."""
    return model.startswith(PREFIX)


def builtin_name(model: str) -> str:
    """``"random:tiny-llama"`` -> ``"tiny-llama"``; raises ``KeyError`` for unknown names."""
    name = model[len(PREFIX) :] if is_builtin(model) else model
    if name not in ARCHITECTURES:
        raise KeyError(name)
    return name


def resolve(model: str, load_format: str = "auto") -> tuple[str, bool]:
    """The path or id a backend loads for ``model``, and whether it gets random weights.

    A ``random:<name>`` model is materialized to a local directory (config and
    tokenizer, no weights: see :func:`materialize`) and always gets random
    weights; any other model is returned as given, with random weights when
    ``load_format == "random"``.

    :raises BackendError: for an unknown built-in name (the message lists the known ones).
    """
    if not is_builtin(model):
        return model, load_format == "random"
    try:
        name = builtin_name(model)
    except KeyError:
        known = ", ".join(a["model"] for a in describe())
        raise BackendError(
            f"model = {model!r}: unknown built-in architecture (known: {known}); see `lem models`"
        ) from None
    return str(materialize(name)), True


def config_dict(name: str) -> dict[str, Any]:
    """The Hugging Face config of a built-in architecture (a copy)."""
    copied: dict[str, Any] = json.loads(json.dumps(ARCHITECTURES[name][1]))
    return copied


def describe() -> list[dict[str, str]]:
    """What ``lem models`` lists."""
    return [{"model": PREFIX + name, "description": desc} for name, (desc, _) in ARCHITECTURES.items()]


# --- the offline tokenizer ------------------------------------------------------------

_WORDS = (
    "the of and to in is was for on that with as by at from his her it an are this be which or "
    "energy power token model latency throughput batch request prompt answer question explain "
    "summarize write list describe compare translate reason step first second third because "
    "however therefore example data system network memory compute graph water river mountain "
    "city history science music language number time year people world small large fast slow "
    "good new old high low long short early late simple complex clear open public private"
).split()


def _training_text(seed: int = 0, lines: int = 4000) -> Iterator[str]:
    rng = random.Random(seed)
    for _ in range(lines):
        n = rng.randint(4, 24)
        words = [rng.choice(_WORDS) for _ in range(n)]
        words[0] = words[0].capitalize()
        yield " ".join(words) + rng.choice([".", "?", "!", ","]) + f" {rng.randint(0, 9999)}"


CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def build_tokenizer(vocab_size: int = TOKENIZER_VOCAB) -> Any:
    """Train the built-in byte-level BPE tokenizer (deterministic, ~0.3 s)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_text(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast


def _cache_root() -> Path:
    base = os.environ.get("LEM_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "lem"
    )
    return Path(base) / "architectures"


def materialize(name: str, dest: str | os.PathLike[str] | None = None) -> Path:
    """Write ``config.json`` and the tokenizer of built-in ``name`` to a directory.

    Without ``dest`` a cache directory keyed by the config is used and reused.
    The directory has no weights: load it with random weights
    (transformers ``from_config``, vLLM ``load_format="dummy"``).
    """
    cfg = config_dict(name)
    key = hashlib.sha1(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:10]
    target = Path(dest) if dest is not None else _cache_root() / f"{name}-{key}"
    if (target / "config.json").exists() and (target / "tokenizer.json").exists():
        return target
    from transformers import AutoConfig

    target.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    model_type = cfg.pop("model_type")
    hf_config = AutoConfig.for_model(
        model_type,
        **cfg,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    tokenizer.save_pretrained(tmp)
    hf_config.save_pretrained(tmp)
    # Another process may have materialized it meanwhile: either copy is the same.
    for f in tmp.iterdir():
        os.replace(f, target / f.name)
    tmp.rmdir()
    return target


def model_config(name: str) -> Mapping[str, Any]:
    """The architecture as recorded in results (Hugging Face config form)."""
    return config_dict(name)

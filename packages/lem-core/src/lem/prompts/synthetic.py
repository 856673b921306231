"""Synthetic prompts of an exact input length in tokens (``dataset.source = "synthetic"``).

The standard workload for throughput and energy comparisons: token ids are
drawn at random (seeded) from the model's vocabulary, so every backend sees
exactly the same ids and exactly ``n`` of them. Backends feed
:attr:`Prompt.token_ids`; the text is there for display and for backends that
can only take text, and it re-tokenizes to the same ids whenever that could
be arranged (see :func:`_canonical_body`).

The ids a backend feeds are ``prefix + body + suffix``: the special tokens the
tokenizer adds itself (a BOS, for many models) or, with
``apply_chat_template``, the chat template around the user message, and a
random body that fills the rest. Random-weight models without a tokenizer get
ids from ``[0, vocab_size)`` and an empty text.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from lem.config import DatasetConfig
from lem.errors import PromptError
from lem.prompts.promptset import Prompt, PromptSet, make_set

# Decode/encode rounds spent looking for a body that re-tokenizes to itself.
_CANONICAL_TRIES = 8
# Marks where the user message goes when splitting a chat template into prefix and suffix.
_SENTINEL = "\u2063LEM-SYNTHETIC-CONTENT\u2063"


def lengths(dataset: DatasetConfig, rng: random.Random) -> tuple[list[int], list[str]]:
    """Input lengths (tokens) of the prompts, from the configured distribution, and any warnings."""
    d = dataset
    lo = d.input_length_min or 1
    hi = d.input_length_max
    if d.input_length_distribution == "fixed":
        out = [d.input_length] * d.num_prompts
    elif d.input_length_distribution == "uniform":
        if d.input_length_min is None or d.input_length_max is None:
            raise PromptError(
                "dataset.input_length_distribution = 'uniform' needs dataset.input_length_min and "
                "dataset.input_length_max (add both, e.g. input_length_min = 64, input_length_max = 512)"
            )
        if d.input_length_min > d.input_length_max:
            raise PromptError(
                f"dataset.input_length_min = {d.input_length_min} is larger than dataset.input_length_max = "
                f"{d.input_length_max} (swap them)"
            )
        out = [rng.randint(d.input_length_min, d.input_length_max) for _ in range(d.num_prompts)]
    else:
        if d.input_length_std is None:
            raise PromptError("dataset.input_length_std is required for a 'normal' input length distribution")
        # Lengths outside [min, max] are clipped to the bounds, not redrawn (as documented).
        out = [round(rng.gauss(d.input_length, d.input_length_std)) for _ in range(d.num_prompts)]
        out = [max(lo, v if hi is None else min(hi, v)) for v in out]
    warnings = []
    if d.max_input_tokens is not None and any(v > d.max_input_tokens for v in out):
        clipped = sum(v > d.max_input_tokens for v in out)
        warnings.append(
            f"{clipped} synthetic prompt lengths clipped to dataset.max_input_tokens = {d.max_input_tokens}"
        )
        out = [min(v, d.max_input_tokens) for v in out]
    return out, warnings


def _describe(d: DatasetConfig, n: int) -> str:
    if d.input_length_distribution == "fixed":
        shape = f"{d.input_length} tokens (fixed)"
    elif d.input_length_distribution == "uniform":
        shape = f"{d.input_length_min}-{d.input_length_max} tokens (uniform)"
    else:
        shape = f"mean {d.input_length} std {d.input_length_std:g} tokens (normal)"
    template = ", chat template" if d.apply_chat_template else ""
    return f"synthetic: {n} prompts, {shape}{template}"


def _pool(tokenizer: Any | None, vocab_size: int | None) -> list[int]:
    """Ids a synthetic body may use: the vocabulary without special and added tokens."""
    if tokenizer is None:
        if vocab_size is None or vocab_size < 1:
            raise PromptError(
                "dataset.source = 'synthetic': the model has no tokenizer and no vocabulary size is known "
                "(pass vocab_size, or give the model a tokenizer)"
            )
        return list(range(vocab_size))
    size = len(tokenizer)
    if vocab_size is not None:
        # The model's embedding table may be smaller than the tokenizer (or padded larger): stay inside both.
        size = min(size, vocab_size)
    special = set(getattr(tokenizer, "all_special_ids", ()) or ())
    special |= set((getattr(tokenizer, "added_tokens_decoder", None) or {}).keys())
    ids = [i for i in range(size) if i not in special]
    # Tokens that decode to part of a character (byte-level BPE) turn into U+FFFD in the text and never
    # re-tokenize to themselves; leaving them out keeps the text faithful to the ids.
    texts = tokenizer.batch_decode([[i] for i in ids])
    pool = [i for i, t in zip(ids, texts, strict=True) if t and "\ufffd" not in t] or ids
    if not pool:
        raise PromptError("dataset.source = 'synthetic': the tokenizer has no ordinary tokens to draw from")
    return pool


def _frame(tokenizer: Any, chat_template: bool) -> tuple[list[int], list[int], str, str]:
    """(prefix ids, suffix ids, prefix text, suffix text) around a synthetic body."""
    if chat_template:
        if not getattr(tokenizer, "chat_template", None):
            raise PromptError(
                "dataset.apply_chat_template = true, but the model's tokenizer has no chat template "
                "(set apply_chat_template = false)"
            )
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": _SENTINEL}], tokenize=False, add_generation_prompt=True
        )
        pre, _, post = text.partition(_SENTINEL)
        return (
            tokenizer.encode(pre, add_special_tokens=False),
            tokenizer.encode(post, add_special_tokens=False),
            pre,
            post,
        )
    # The special tokens the tokenizer adds by itself (e.g. BOS), found around a probe text.
    plain = tokenizer.encode("a", add_special_tokens=False)
    full = tokenizer.encode("a", add_special_tokens=True)
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start], full[start + len(plain) :], "", ""
    return [], [], "", ""


def _canonical_body(
    tokenizer: Any,
    body: list[int],
    frame: tuple[list[int], list[int], str, str],
    chat: bool,
    pool: Sequence[int],
    allowed: frozenset[int],
    rng: random.Random,
) -> tuple[list[int], bool]:
    """A body of the same length whose text re-tokenizes to exactly ``prefix + body + suffix``, if found.

    Random ids rarely survive decode/encode (BPE merges them differently), so
    the body is replaced by the re-encoding of its own text, cut or topped up
    to length, until it is a fixed point. Ids outside the pool (merges beyond
    the model's vocabulary, special tokens spelled out by the text) are
    replaced, so the body always stays inside the pool. Returns the body and
    whether it is a fixed point.
    """
    prefix, suffix, pre, post = frame
    m = len(body)
    for _ in range(_CANONICAL_TRIES):
        text = tokenizer.decode(body)
        ids = tokenizer.encode(pre + text + post, add_special_tokens=not chat)
        if ids == prefix + body + suffix:
            return body, True
        body = [i if i in allowed else rng.choice(pool) for i in tokenizer.encode(text, add_special_tokens=False)[:m]]
        body += rng.choices(pool, k=m - len(body))
    return body, False


def load_synthetic(
    dataset: DatasetConfig, tokenizer: Any | None, *, seed: int, vocab_size: int | None = None
) -> PromptSet:
    """Synthetic prompts of exact token lengths; see the module docstring."""
    rng = random.Random(seed)
    sizes, warnings = lengths(dataset, rng)
    pool = _pool(tokenizer, vocab_size)
    if tokenizer is None:
        if dataset.apply_chat_template:
            warnings.append("dataset.apply_chat_template ignored: the model has no tokenizer")
        prompts = [Prompt("", tuple(rng.choices(pool, k=n)), n) for n in sizes]
        return make_set(prompts, _describe(dataset, len(prompts)), warnings)

    frame = _frame(tokenizer, dataset.apply_chat_template)
    prefix, suffix, pre, post = frame
    overhead = len(prefix) + len(suffix)
    allowed = frozenset(pool)
    prompts = []
    not_canonical = 0
    for n in sizes:
        m = n - overhead
        if m < (1 if dataset.apply_chat_template else 0):
            raise PromptError(
                f"dataset.input_length: a prompt of {n} tokens is too short for the "
                f"{overhead} tokens the {'chat template' if dataset.apply_chat_template else 'tokenizer'} adds "
                f"(use input lengths of at least {overhead + 1})"
            )
        body, canonical = _canonical_body(
            tokenizer, rng.choices(pool, k=m), frame, dataset.apply_chat_template, pool, allowed, rng
        )
        not_canonical += not canonical
        ids = tuple(prefix + body + suffix)
        prompts.append(Prompt(pre + tokenizer.decode(body) + post, ids, len(ids)))
    if not_canonical:
        warnings.append(
            f"{not_canonical} of {len(prompts)} synthetic prompts do not re-tokenize from their text to the same "
            "ids; backends must feed Prompt.token_ids for exact lengths"
        )
    return make_set(prompts, _describe(dataset, len(prompts)), warnings)

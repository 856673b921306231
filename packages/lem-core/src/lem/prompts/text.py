"""The pipeline shared by the text sources (builtin, file, huggingface).

``columns`` (field name -> values) ─▶ pick the text field (+ alpaca-style input
field) ─▶ drop empty rows ─▶ first N or seeded random sample ─▶ chat template
─▶ truncation to ``max_input_tokens`` ─▶ :class:`Prompt`\\ s with their token counts (and, with
``dataset.reference_field``, each row's expected answer).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from lem.config import DatasetConfig
from lem.errors import PromptError
from lem.prompts.promptset import Prompt, PromptSet, make_set

#: Fields tried, in order, when ``dataset.field`` is not set.
DEFAULT_FIELDS = ("prompt", "text", "instruction", "question", "input", "content")
#: Fields tried, in order, for the alpaca-style second part when ``dataset.input_field`` is not set
#: and the text field is ``instruction`` (so ``tatsu-lab/alpaca`` works with no field options at all).
_ALPACA_INPUT = "input"
# Rounds of cut-and-re-encode when truncating (decode/encode may not be exact at the cut).
_TRUNCATE_TRIES = 4


def pick_field(available: Sequence[str], dataset: DatasetConfig, origin: str) -> tuple[str, str | None]:
    """(text field, input field or None) for a source whose fields are ``available``."""
    shown = ", ".join(repr(f) for f in available) or "none"
    if dataset.field is not None:
        if dataset.field not in available:
            raise PromptError(
                f"dataset.field = {dataset.field!r}: no such field in {origin} (available fields: {shown})"
            )
        field = dataset.field
    else:
        found = [f for f in DEFAULT_FIELDS if f in available]
        if not found:
            raise PromptError(
                f"dataset.field is not set and {origin} has none of the usual prompt fields "
                f"({', '.join(DEFAULT_FIELDS)}); available fields: {shown} (set dataset.field)"
            )
        field = found[0]
    if dataset.input_field is not None:
        if dataset.input_field not in available:
            raise PromptError(
                f"dataset.input_field = {dataset.input_field!r}: no such field in {origin} (available fields: {shown})"
            )
        return field, dataset.input_field
    if dataset.field is None and field == "instruction" and _ALPACA_INPUT in available:
        return field, _ALPACA_INPUT
    return field, None


def _as_text(value: Any, field: str, row: int, origin: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise PromptError(
        f"dataset.field = {field!r}: row {row} of {origin} holds a {type(value).__name__}, not text "
        "(choose a field that holds the prompt text)"
    )


def combine(columns: Mapping[str, Sequence[Any]], field: str, input_field: str | None, origin: str) -> list[str]:
    """The prompt text of every row: ``field``, then a blank line and ``input_field`` when that is non-empty."""
    texts = []
    inputs = columns[input_field] if input_field else None
    for row, value in enumerate(columns[field]):
        text = _as_text(value, field, row, origin).strip()
        extra = _as_text(inputs[row], input_field, row, origin).strip() if inputs is not None and input_field else ""
        texts.append(f"{text}\n\n{extra}" if text and extra else text or extra)
    return texts


def select(texts: Sequence[str], dataset: DatasetConfig, seed: int, origin: str) -> tuple[list[str], list[str]]:
    """The prompts to use (first N or a seeded random sample of the non-empty texts) and warnings."""
    rows, warnings = select_rows(texts, dataset, seed, origin)
    return [texts[i] for i in rows], warnings


def select_rows(texts: Sequence[str], dataset: DatasetConfig, seed: int, origin: str) -> tuple[list[int], list[str]]:
    """The rows :func:`select` takes, by index into ``texts`` (so other columns can follow them), and warnings."""
    warnings = []
    usable = [i for i, t in enumerate(texts) if t]
    if not usable:
        raise PromptError(f"{origin} holds no prompts (it is empty, or the chosen field is empty in every row)")
    if len(usable) < len(texts):
        warnings.append(f"{len(texts) - len(usable)} empty rows of {origin} skipped")
    n = dataset.num_prompts
    if len(usable) < n:
        warnings.append(f"dataset.num_prompts = {n}, but {origin} has only {len(usable)} prompts: using {len(usable)}")
        n = len(usable)
    if dataset.sampling == "random":
        return random.Random(seed).sample(usable, n), warnings
    return usable[:n], warnings


def references(
    columns: Mapping[str, Sequence[Any]], available: Sequence[str], rows: Sequence[int], field: str, origin: str
) -> list[str]:
    """The expected answer of each chosen row, from ``dataset.reference_field``; a missing field or an empty
    reference is a :class:`PromptError` naming the row."""
    if field not in available:
        shown = ", ".join(repr(f) for f in available) or "none"
        raise PromptError(f"dataset.reference_field = {field!r}: no such field in {origin} (available fields: {shown})")
    out = []
    for row in rows:
        value = columns[field][row]
        text = _as_text(value, field, row, origin).strip() if not isinstance(value, bool) else str(value)
        if not text:
            raise PromptError(
                f"dataset.reference_field = {field!r}: row {row} of {origin} has an empty reference "
                "(fill it in, or drop the row)"
            )
        out.append(text)
    return out


def _template(tokenizer: Any, content: str) -> str:
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
    )
    return str(text)


def prepare(content: str, tokenizer: Any, dataset: DatasetConfig) -> tuple[Prompt, bool]:
    """One prompt: chat template if asked, cut to ``max_input_tokens``; and whether it was cut.

    The cut is made in the user's text, never in the special tokens or the
    chat template around it, so a truncated prompt still ends where the model
    is asked to answer.
    """
    chat = dataset.apply_chat_template
    limit = dataset.max_input_tokens

    def render(text: str) -> tuple[str, list[int]]:
        if not chat:
            return text, list(tokenizer.encode(text))
        templated = _template(tokenizer, text)
        # The template writes its own special tokens (BOS...); adding them again would double them.
        return templated, list(tokenizer.encode(templated, add_special_tokens=False))

    text, ids = render(content)
    truncated = False
    if limit is not None and len(ids) > limit:
        truncated = True
        body = list(tokenizer.encode(content, add_special_tokens=False))
        keep = len(body) - (len(ids) - limit)
        for _ in range(_TRUNCATE_TRIES):
            if keep < 1:
                raise PromptError(
                    f"dataset.max_input_tokens = {limit} leaves no room for the prompt text after the "
                    f"{len(ids) - len(body)} tokens the {'chat template' if chat else 'tokenizer'} adds "
                    "(raise max_input_tokens)"
                )
            content = tokenizer.decode(body[:keep]).rstrip("\ufffd")
            text, ids = render(content)
            if len(ids) <= limit:
                break
            keep -= len(ids) - limit
        else:
            ids = ids[:limit]
    # Templated prompts carry their ids so backends do not add a second BOS to the template's own.
    return Prompt(text, tuple(ids) if chat else None, len(ids)), truncated


def build(
    columns: Mapping[str, Sequence[Any]],
    available: Sequence[str],
    dataset: DatasetConfig,
    tokenizer: Any | None,
    *,
    seed: int,
    origin: str,
    warnings: Sequence[str] = (),
) -> PromptSet:
    """Run the whole pipeline over a source's columns; ``origin`` names the source in messages."""
    if tokenizer is None:
        raise PromptError(
            f"dataset.source = {dataset.source!r} needs the model's tokenizer, and this model has none "
            "(use source = 'synthetic', or a model with a tokenizer)"
        )
    if dataset.apply_chat_template and not getattr(tokenizer, "chat_template", None):
        raise PromptError(
            "dataset.apply_chat_template = true, but the model's tokenizer has no chat template "
            "(set apply_chat_template = false)"
        )
    field, input_field = pick_field(available, dataset, origin)
    combined = combine(columns, field, input_field, origin)
    rows, more = select_rows(combined, dataset, seed, origin)
    refs: list[str | None] = [None] * len(rows)
    if dataset.reference_field is not None:
        refs = list(references(columns, available, rows, dataset.reference_field, origin))
    prompts, cut = [], 0
    for row, ref in zip(rows, refs, strict=True):
        prompt, truncated = prepare(combined[row], tokenizer, dataset)
        prompts.append(attrs.evolve(prompt, reference=ref))
        cut += truncated
    notes = [*warnings, *more]
    if cut:
        notes.append(
            f"{cut} of {len(prompts)} prompts truncated to dataset.max_input_tokens = {dataset.max_input_tokens}"
        )
    parts = [f"{origin}: {len(prompts)} prompts", f"field {field!r}" + (f" + {input_field!r}" if input_field else "")]
    parts.append(f"random sample (seed {seed})" if dataset.sampling == "random" else "first")
    if dataset.apply_chat_template:
        parts.append("chat template")
    if dataset.max_input_tokens is not None:
        parts.append(f"max {dataset.max_input_tokens} tokens")
    if dataset.reference_field is not None:
        parts.append(f"references {dataset.reference_field!r}")
    return make_set(prompts, ", ".join(parts), notes)

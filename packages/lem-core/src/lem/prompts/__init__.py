"""Prompt sources: where an experiment's prompts come from (``[dataset]``).

:func:`load_prompts` turns a :class:`~lem.config.DatasetConfig` into a
:class:`PromptSet` for the model's tokenizer:

=============== ======================================================
``source``      prompts
=============== ======================================================
``synthetic``   random token ids of exact lengths (:mod:`.synthetic`)
``builtin``     the prompt set shipped with lem (:mod:`.builtin`)
``file``        a local JSONL, CSV, Parquet or text file (:mod:`.files`)
``huggingface`` a Hugging Face dataset by name or saved path (:mod:`.hub`)
=============== ======================================================

None of ``datasets``, ``pyarrow`` or ``transformers`` is imported here; the
sources that need them import them when called.
"""

from __future__ import annotations

from typing import Any

from lem.config import DatasetConfig
from lem.errors import PromptError
from lem.prompts.builtin import load_builtin
from lem.prompts.files import load_file
from lem.prompts.hub import load_hub
from lem.prompts.promptset import Prompt, PromptSet, token_stats
from lem.prompts.synthetic import load_synthetic

__all__ = ["Prompt", "PromptSet", "load_prompts", "token_stats"]


def load_prompts(
    dataset: DatasetConfig, tokenizer: Any | None, *, seed: int, vocab_size: int | None = None
) -> PromptSet:
    """Resolve ``[dataset]`` into prompts for the model's tokenizer.

    :param dataset: the ``[dataset]`` table.
    :param tokenizer: a Hugging Face-compatible tokenizer (``encode``, ``decode``,
        ``apply_chat_template``), or ``None`` when the model has none: then only
        ``synthetic`` works, from ids in ``[0, vocab_size)``.
    :param seed: seeds synthetic ids and lengths and ``sampling = "random"``.
    :param vocab_size: the model's vocabulary size; synthetic ids stay below it.
    :returns: the prompts, a one-line description, token-length statistics and warnings.
    :raises lem.errors.PromptError: when prompts cannot be produced (the message says why and what to do).
    """
    if dataset.source == "synthetic":
        return load_synthetic(dataset, tokenizer, seed=seed, vocab_size=vocab_size)
    if dataset.source == "builtin":
        return load_builtin(dataset, tokenizer, seed=seed)
    if dataset.source == "file":
        return load_file(dataset, tokenizer, seed=seed)
    if dataset.source == "huggingface":
        return load_hub(dataset, tokenizer, seed=seed)

    raise PromptError(
        f"dataset.source = {dataset.source!r}: unknown source (use 'synthetic', 'builtin', 'file' or 'huggingface')"
    )

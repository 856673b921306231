"""lem's own prompt set (``dataset.source = "builtin"``), shipped with lem-core and usable offline.

``data/builtin.jsonl`` holds prompts written for this project, one JSON
object per line with ``id``, ``category`` and ``prompt``. The categories are
the subsets (``dataset.subset``):

- ``short``: short questions (a sentence or two);
- ``instruction``: tasks with an instruction and often some input
  (write, rewrite, summarize, code, classify, plan);
- ``long``: long-context tasks, a passage of several hundred words and a question about it.

Without a subset all of them are used. The lines are in a fixed mixed order,
so ``sampling = "first"`` gets a mix of the three categories too.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from lem.config import DatasetConfig
from lem.errors import PromptError
from lem.prompts.promptset import PromptSet
from lem.prompts.text import build

#: The subsets (``dataset.subset``) of the built-in prompt set.
SUBSETS = ("short", "instruction", "long")


def read_builtin() -> list[dict[str, Any]]:
    """Every entry of the built-in prompt set, in file order."""
    text = resources.files("lem.prompts").joinpath("data", "builtin.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def load_builtin(dataset: DatasetConfig, tokenizer: Any | None, *, seed: int) -> PromptSet:
    """Prompts from the built-in set, optionally one subset (``dataset.subset``)."""
    entries = read_builtin()
    origin = "builtin"
    if dataset.subset is not None:
        if dataset.subset not in SUBSETS:
            raise PromptError(
                f"dataset.subset = {dataset.subset!r}: the builtin prompt set has no such subset "
                f"(use one of {', '.join(SUBSETS)}, or leave it out for all)"
            )
        entries = [e for e in entries if e["category"] == dataset.subset]
        origin = f"builtin {dataset.subset!r}"
    names = ["id", "category", "prompt"]
    columns = {name: [e.get(name) for e in entries] for name in names}
    return build(columns, names, dataset, tokenizer, seed=seed, origin=origin)

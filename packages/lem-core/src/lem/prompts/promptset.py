"""The result of a prompt source: :class:`Prompt`, :class:`PromptSet` and their token statistics."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import attrs

from lem.figures.stats import std


@attrs.frozen
class Prompt:
    """One prompt, ready for a backend.

    :param text: the prompt text (chat template applied if asked for).
    :param token_ids: the exact ids to feed when known (synthetic prompts,
        chat-templated prompts), else ``None`` and the backend tokenizes ``text``.
    :param n_tokens: input length in tokens of the model's tokenizer.
    :param reference: the expected answer (``dataset.reference_field``), scored by ``[quality]``.
    """

    text: str
    token_ids: tuple[int, ...] | None
    n_tokens: int
    reference: str | None = None


@attrs.frozen
class PromptSet:
    """The prompts of one experiment, with a description and their token-length statistics.

    :param prompts: the prompts, in the order they are served.
    :param description: one line for humans and results, e.g. ``"synthetic: 100 prompts, 128 tokens (fixed)"``.
    :param stats: ``n, mean, std, min, p50, p90, p99, max`` of :attr:`Prompt.n_tokens`.
    :param warnings: things the user should know (fewer prompts than asked for, truncation...).
    """

    prompts: tuple[Prompt, ...]
    description: str
    stats: Mapping[str, float | int | None]
    warnings: tuple[str, ...] = ()


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of sorted values, interpolated linearly (numpy's default)."""
    if not sorted_values:
        return math.nan
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return float(sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo))


def token_stats(lengths: Sequence[int]) -> dict[str, float | int | None]:
    """``n, mean, std, min, p50, p90, p99, max`` of token lengths.

    ``std`` is the sample standard deviation (n - 1), like every other figure
    (``None`` for one prompt); ``n``, ``min`` and ``max`` are integers.
    """
    values = sorted(int(v) for v in lengths)
    n = len(values)
    if n == 0:
        return {"n": 0}
    return {
        "n": n,
        "mean": sum(values) / n,
        "std": std(values),
        "min": values[0],
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": values[-1],
    }


def make_set(prompts: Sequence[Prompt], description: str, warnings: Sequence[str] = ()) -> PromptSet:
    """Build a :class:`PromptSet` and compute its statistics."""
    return PromptSet(
        prompts=tuple(prompts),
        description=description,
        stats=token_stats([p.n_tokens for p in prompts]),
        warnings=tuple(warnings),
    )

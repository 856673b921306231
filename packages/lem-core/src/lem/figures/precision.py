"""Precision targets: the relative 95% confidence interval of headline figures, and when a run has enough cycles.

``measurement.target_rel_ci`` asks for the 95% CI half-width of J/output
token and of output tok/s, each relative to its mean, to be within the
target. The runner keeps running cycles after ``measurement.cycles`` until
both are (or ``max_cycles``); :func:`precision_block` recomputes the verdict
from the cycles alone, so ``lem results aggregate`` says the same. Without
energy measured the target applies to throughput only, and the block says so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lem.config import cycle_limit
from lem.figures.registry import FIGURES
from lem.figures.stats import interval


def rel_ci(values: Sequence[float | None]) -> float | None:
    """The 95% CI half-width over the mean's magnitude, or ``None`` (fewer than 2 values, a zero mean)."""
    fig = interval(values)
    if fig["ci95_high"] is None or not fig["mean"]:
        return None
    return float((fig["ci95_high"] - fig["mean"]) / abs(fig["mean"]))


def _value(block: Mapping[str, Any], path: Sequence[str]) -> Any:
    node: Any = block
    for key in path:
        node = node.get(key) if isinstance(node, Mapping) else None
    return node


def check(blocks: Sequence[Mapping[str, Any]], target: float) -> tuple[bool, dict[str, float | None], list[str]]:
    """``(met, relative CI per figure, figures the target applies to)`` over cycle blocks.

    Energy per token counts only when every cycle measured it; otherwise the target applies to throughput.
    """
    rels: dict[str, float | None] = {}
    applies = []
    # Energy first, then throughput: the order summaries have always listed them in.
    for row in sorted((r for r in FIGURES if r.precision_target), key=lambda r: r.method != "energy"):
        name, path = row.name, row.path
        values = [_value(b, path) for b in blocks]
        rels[name] = rel_ci(values)
        if name.startswith("energy.") and (not values or any(v is None for v in values)):
            continue
        applies.append(name)
    met = all((r := rels[n]) is not None and r <= target for n in applies)
    return met, rels, applies


def precision_block(config: Mapping[str, Any], blocks: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The summary's ``precision`` block for a run with ``measurement.target_rel_ci``; ``None`` without one.

    ``met_after_cycles`` is the first number of cycles (at least ``measurement.cycles``) at which the
    target held, found by replaying the cycles in order, as the runner did.
    """
    target = config.get("measurement.target_rel_ci")
    if target is None:
        return None
    first = int(config.get("measurement.cycles", 1) or 1)
    met_after = None
    for n in range(max(2, first), len(blocks) + 1):
        if check(blocks[:n], float(target))[0]:
            met_after = n
            break
    met, rels, applies = check(blocks, float(target))
    note = None
    if "energy.j_per_output_token" not in applies:
        note = "energy per token was not measured in every cycle: the target applied to throughput only"
    return {
        "target_rel_ci": float(target),
        "max_cycles": config.get("measurement.max_cycles"),
        "cycles": len(blocks),
        "met": met,
        "met_after_cycles": met_after,
        "applies_to": applies,
        "rel_ci95": rels,
        "note": note,
    }


def unfinished(config: Mapping[str, Any], blocks: Sequence[Mapping[str, Any]]) -> str | None:
    """Why the runner would not have stopped after ``blocks`` (an experiment cut short); ``None`` if it would.

    The runner's stop rule replayed: ``measurement.cycles`` cycles, or under a precision target the first
    count (at least ``cycles``) at which it held, else the cycle limit. A config without ``cycles`` (an
    old result) cannot tell, and counts as finished.
    """
    cycles = config.get("measurement.cycles")
    if not isinstance(cycles, int):
        return None
    target = config.get("measurement.target_rel_ci")
    if target is None:
        return None if len(blocks) >= cycles else f"{len(blocks)} of {cycles} cycles"
    limit = cycle_limit(cycles, target, config.get("measurement.max_cycles"))
    block = precision_block(config, blocks)
    if len(blocks) >= limit or (block is not None and block["met_after_cycles"] is not None):
        return None
    return f"{len(blocks)} cycles, neither the precision target met nor the limit of {limit} reached"

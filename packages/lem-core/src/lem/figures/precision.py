"""Precision targets: the relative 95% confidence interval of headline figures, and when a run has enough cycles.

``measurement.target_rel_ci`` asks for the 95% CI half-width of J/output
token and of output tok/s, each relative to its mean, to be within the
target. The runner keeps running cycles after ``measurement.cycles`` until
both are (or ``max_cycles``): one stop rule, :func:`stops_after`, which
:func:`precision_block` replays over the cycles alone, so ``lem results
aggregate`` says the same. Without
energy measured the target applies to throughput only, and the block says so.
``measurement.target_figures`` names the figures the target applies to
(default: both), so a J/token target is not held back by throughput noise.
Under ``measurement.validity`` other than ``warn``, spoilt cycles are left out
of the check and a replaced one does not count (:mod:`lem.figures.validity`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lem.config import MeasurementConfig
from lem.figures.registry import FIGURES
from lem.figures.stats import interval
from lem.figures.validity import partition


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


def check(
    blocks: Sequence[Mapping[str, Any]], target: float, names: Sequence[str] | None = None
) -> tuple[bool, dict[str, float | None], list[str]]:
    """``(met, relative CI per figure, figures the target applies to)`` over cycle blocks.

    ``names`` are the figures asked for (``measurement.target_figures``; default every figure a target may
    apply to). Energy per token counts only when every cycle measured it; otherwise the target applies to
    the others.
    """
    rels: dict[str, float | None] = {}
    applies = []
    # Energy first, then throughput: the order summaries have always listed them in.
    for row in sorted((r for r in FIGURES if r.precision_target), key=lambda r: r.method != "energy"):
        name, path = row.name, row.path
        if names is not None and name not in names:
            continue
        values = [_value(b, path) for b in blocks]
        rels[name] = rel_ci(values)
        if name.startswith("energy.") and (not values or any(v is None for v in values)):
            continue
        applies.append(name)
    met = bool(applies) and all((r := rels[n]) is not None and r <= target for n in applies)
    return met, rels, applies


def _kept(m: MeasurementConfig, blocks: Sequence[Mapping[str, Any]]) -> tuple[int, list[Mapping[str, Any]]]:
    """``(cycles counted, blocks included)`` under ``measurement.validity``."""
    parts = partition(m, blocks)
    return len(parts["counted"]), [blocks[i] for i in parts["included"]]


def stops_after(m: MeasurementConfig, blocks: Sequence[Mapping[str, Any]]) -> bool:
    """The stop rule: whether an experiment stops after the cycles ``blocks`` (in the order they ran).

    Without a precision target it stops after ``measurement.cycles``. With one, after the first count
    (at least ``cycles``, and at least 2: an interval needs 2) at which the target holds (:func:`check`),
    or at the cycle limit (:attr:`lem.config.MeasurementConfig.cycle_limit`). The runner follows this
    function after every cycle; the summary replays it (:func:`stopping_point`), so both say the same.
    """
    n, kept = _kept(m, blocks)
    if m.target_rel_ci is None:
        return n >= m.cycles
    if n >= m.cycle_limit:
        return True
    return n >= max(2, m.cycles) and len(kept) >= 2 and check(kept, m.target_rel_ci, m.target_figures)[0]


def stopping_point(m: MeasurementConfig, blocks: Sequence[Mapping[str, Any]]) -> int | None:
    """After how many of ``blocks`` the stop rule (:func:`stops_after`) stops; ``None`` when it never does
    (an experiment cut short)."""
    return next((n for n in range(1, len(blocks) + 1) if stops_after(m, blocks[:n])), None)


def precision_block(m: MeasurementConfig, blocks: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The summary's ``precision`` block for a run with ``measurement.target_rel_ci``; ``None`` without one.

    ``max_cycles`` is the limit the run had (``measurement.max_cycles``, or its default when unset);
    ``stopped_after_cycles`` is where the stop rule (:func:`stops_after`) stopped, replaying the cycles
    in order as the runner did, and ``stopped_by`` says why (``"target"`` or ``"limit"``; ``None``
    when it did not stop: cut short). ``met_after_cycles`` is that count when the target held there.
    """
    target = m.target_rel_ci
    if target is None:
        return None
    stopped = stopping_point(m, blocks)
    met_at_stop = False
    if stopped is not None:
        n, kept = _kept(m, blocks[:stopped])
        met_at_stop = n >= max(2, m.cycles) and len(kept) >= 2 and check(kept, target, m.target_figures)[0]
    met, rels, applies = check(_kept(m, blocks)[1], target, m.target_figures)
    note = None
    asked = m.target_figures or [r.name for r in FIGURES if r.precision_target]
    if "energy.j_per_output_token" in asked and "energy.j_per_output_token" not in applies:
        rest = "throughput only" if applies == ["output_tokens_per_s"] else (", ".join(applies) or "no figure")
        note = f"energy per token was not measured in every cycle: the target applied to {rest}"
    return {
        "target_rel_ci": float(target),
        "max_cycles": m.cycle_limit,
        "cycles": len(blocks),
        "met": met,
        "met_after_cycles": stopped if met_at_stop else None,
        "stopped_after_cycles": stopped,
        "stopped_by": None if stopped is None else ("target" if met_at_stop else "limit"),
        "applies_to": applies,
        "rel_ci95": rels,
        # Which of the figures it applies to met the target on their own.
        "met_by": [n for n in applies if (r := rels[n]) is not None and r <= target],
        "note": note,
    }


def unfinished(m: MeasurementConfig, blocks: Sequence[Mapping[str, Any]]) -> str | None:
    """Why the runner would not have stopped after ``blocks`` (an experiment cut short); ``None`` if it would
    (the stop rule, :func:`stops_after`, replayed)."""
    if stopping_point(m, blocks) is not None:
        return None
    if m.target_rel_ci is None:
        return f"{len(blocks)} of {m.cycles} cycles"
    return f"{len(blocks)} cycles, neither the precision target met nor the limit of {m.cycle_limit} reached"

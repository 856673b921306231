"""The uncertainty budget of each energy figure: what the number is worth, term by term.

Each term is a relative bound (a share of the figure), from what the cycles
the summary includes recorded:

- ``resolution``: the counter's step (``resolution_j``) over the window's
  energy, the largest over the cycles;
- ``update_period``: the counter advances every ``update_period_s``, so a
  window edge read as it is holds a value up to one period old; the two
  edges' lags differ by at most one period. Where the meter aligned the edges
  to the counter's updates it records the smaller bound as ``edge_lag_s``:
  ``edge_lag_s / duration_s``, else ``update_period_s / duration_s`` (the
  largest over the devices and cycles);
- ``cross_check``: the largest disagreement between the counter and the power
  timeline integrated (``energy.cross_check``), over the cycles;
- ``idle_baseline``: the idle baseline's power spread (standard deviation of
  its samples over their mean), carried into the figure in proportion to the
  idle energy it holds: 0 for totals, the spread itself for idle figures,
  spread × idle J / dynamic J for dynamic figures;
- ``run_to_run``: the 95% CI half-width across cycles over the mean (``rel_ci95``).

The instrument terms are worst-case bounds, not standard deviations, and need
not be independent, so they are added, not combined in quadrature:
``combined = resolution + update_period + cross_check + idle_baseline + run_to_run``.
A term the instruments cannot give is ``None`` and named in ``not_covered``:
the combined bound then claims nothing for it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

#: Energy figures that get a budget, and how much of the idle baseline each holds.
BUDGETED = {
    "energy.total_j": "none",
    "energy.j_per_output_token": "none",
    "energy.output_tokens_per_j": "none",
    "energy.mean_power_w": "none",
    "energy.idle_j": "idle",
    "energy.idle_j_per_output_token": "idle",
    "energy.dynamic_j": "dynamic",
    "energy.dynamic_j_per_output_token": "dynamic",
}
TERMS = ("resolution", "update_period", "cross_check", "idle_baseline", "run_to_run")
COMBINATION = "sum of the relative bounds (worst case: the instrument terms are bounds, not standard deviations)"


def power_spread(timeline: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The idle baseline's power spread from its timeline: ``{mean_w, std_w, rel_spread, samples, reason}``.

    Total power at each sample instant is the sum of the devices' samples taken in the same sampling round
    (rows with the same ``t_s`` rounded to 10 ms would be too strict: devices are read one after another),
    so the spread is taken per device and summed as a bound: ``std_w = Σ std_d``.
    """
    by_device: dict[Any, list[float]] = {}
    for row in timeline:
        p = row.get("power_w")
        if isinstance(p, (int, float)) and not isinstance(p, bool):
            by_device.setdefault((row.get("component") or "gpu", row.get("device")), []).append(float(p))
    out: dict[str, Any] = {"mean_w": None, "std_w": None, "rel_spread": None, "samples": 0, "reason": None}
    if not by_device or any(len(v) < 2 for v in by_device.values()):
        out["reason"] = "fewer than 2 power samples of the idle baseline per device"
        return out
    mean = sum(sum(v) / len(v) for v in by_device.values())
    std = 0.0
    for v in by_device.values():
        m = sum(v) / len(v)
        std += math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1))
    out.update(mean_w=mean, std_w=std, samples=sum(len(v) for v in by_device.values()))
    out["rel_spread"] = std / mean if mean > 0 else None
    return out


def _number(value: Any) -> float | None:
    """``value`` when it is a positive number (not a bool), else ``None``."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
    return float(value) if ok else None


def _largest(values: Sequence[float | None]) -> float | None:
    known = [abs(v) for v in values if v is not None]
    return max(known) if known and len(known) == len(values) else None


def instrument_terms(energies: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    """The instrument terms of a total energy over the included cycles' energy blocks."""
    resolution: list[float | None] = []
    period: list[float | None] = []
    cross: list[float | None] = []
    for e in energies:
        total, dur = e.get("total_j"), e.get("duration_s")
        devices = e.get("devices") or []
        steps = [d.get("resolution_j") for d in devices]
        resolution.append(sum(steps) / total if total and all(s is not None for s in steps) and steps else None)
        lags = [_number(d.get("edge_lag_s")) or _number(d.get("update_period_s")) for d in devices]
        known = [x for x in lags if x is not None]
        seconds = _number(dur)
        period.append(max(known) / seconds if seconds and known and len(known) == len(lags) else None)
        cross.append((e.get("cross_check") or {}).get("rel_diff"))
    if not energies:
        return dict.fromkeys(("resolution", "update_period", "cross_check"))
    return {"resolution": _largest(resolution), "update_period": _largest(period), "cross_check": _largest(cross)}


def _idle_share(kind: str, energies: Sequence[Mapping[str, Any]], spread: float | None) -> float | None:
    if kind == "none":
        return 0.0
    if spread is None:
        return None
    if kind == "idle":
        return spread
    ratios = []
    for e in energies:
        idle, dyn = e.get("idle_j"), e.get("dynamic_j")
        if idle is None or not dyn:
            return None
        ratios.append(abs(idle / dyn))
    return spread * max(ratios) if ratios else None


def budget(
    energies: Sequence[Mapping[str, Any]],
    figures: Mapping[str, Mapping[str, Any]],
    idle_spread: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The summary's ``uncertainty`` block: per budgeted figure its terms, ``combined`` and ``not_covered``.

    ``energies`` are the included cycles' energy blocks, ``figures`` the summary's figures (their
    ``rel_ci95``), ``idle_spread`` the idle baseline's :func:`power_spread` (``None`` when not recorded).
    """
    out: dict[str, Any] = {"combination": COMBINATION, "figures": {}}
    if not energies or any(e.get("total_j") is None for e in energies):
        out["reason"] = "energy was not measured in every included cycle"
        return out
    out["reason"] = None
    instruments = instrument_terms(energies)
    spread = (idle_spread or {}).get("rel_spread")
    for name, kind in BUDGETED.items():
        fig = figures.get(name) or {}
        if fig.get("mean") is None:
            continue
        terms = {**instruments, "idle_baseline": _idle_share(kind, energies, spread), "run_to_run": fig.get("rel_ci95")}
        known = [v for v in terms.values() if v is not None]
        out["figures"][name] = {
            **terms,
            "combined": sum(known),
            "not_covered": [t for t in TERMS if terms[t] is None],
        }
    return out

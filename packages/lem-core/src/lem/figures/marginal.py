"""Fixed and marginal energy across a sweep: the J each extra output token costs, from a fit with its interval.

Over the experiments of a sweep (batch size, request rate...), every cycle
each summary includes is a point (output tok/s, mean power W). A
least-squares line ``power = fixed_w + marginal × tok/s`` gives the marginal
energy per extra output token (its slope, J/token) and the power the work
would draw at zero throughput (its intercept, W). The slope's 95% interval is
Student's t with n - 2 degrees of freedom times its standard error. With
fewer than 3 points or 2 experiments, or a throughput that does not vary,
there is no fit: ``None`` figures with the reason. A fit over any estimated
mean power (CodeCarbon's TDP guess) is an estimate: ``method_kind`` says so,
``basis`` says on what, and :func:`text` marks it as every screen marks one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from lem.figures.registry import ESTIMATE, method_of
from lem.figures.stats import t_quantile_975

METHOD = "least-squares fit of each cycle's mean power (W) on its output tok/s: slope = J per extra output token"


def points(summaries: Sequence[Mapping[str, Any]]) -> list[tuple[float, float]]:
    """``(output tok/s, mean power W)`` of every included cycle of every summary with both measured."""
    out = []
    for s in summaries:
        figures = s.get("figures") or {}
        tps = (figures.get("output_tokens_per_s") or {}).get("values") or []
        power = (figures.get("energy.mean_power_w") or {}).get("values") or []
        out += [(float(x), float(y)) for x, y in zip(tps, power, strict=False) if x is not None and y is not None]
    return out


def marginal_energy(summaries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The sweep's marginal J per output token and fixed power, with the slope's 95% interval (see the module)."""
    pts = points(summaries)
    fitted = [s for s in summaries if points([s])]  # the experiments that give points
    used = len(fitted)
    estimates = [m for m in (method_of(s, "energy.mean_power_w") for s in fitted) if m.estimate]
    out: dict[str, Any] = {
        "marginal_j_per_output_token": None,
        "ci95_low": None,
        "ci95_high": None,
        "fixed_power_w": None,
        "points": len(pts),
        "experiments": used,
        "method": METHOD,
        # The power it fits: measured, or an estimate in any experiment (then the fit is one too).
        "method_kind": "estimate" if estimates else "measured",
        "basis": "; ".join(dict.fromkeys(m.basis for m in estimates if m.basis)) or None,
        "reason": None,
    }
    if len(pts) < 3 or used < 2:
        out["reason"] = f"a fit needs 3 cycles over 2 experiments with energy measured ({len(pts)} over {used})"
        return out
    n = len(pts)
    mx = sum(x for x, _ in pts) / n
    my = sum(y for _, y in pts) / n
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    if sxx <= 0:
        out["reason"] = "throughput does not vary across the sweep: no slope to fit"
        return out
    slope = sum((x - mx) * (y - my) for x, y in pts) / sxx
    intercept = my - slope * mx
    residual = sum((y - intercept - slope * x) ** 2 for x, y in pts)
    se = math.sqrt(residual / (n - 2) / sxx) if n > 2 else float("nan")
    half = t_quantile_975(n - 2) * se
    out.update(
        marginal_j_per_output_token=slope,
        ci95_low=slope - half,
        ci95_high=slope + half,
        fixed_power_w=intercept,
    )
    return out


def text(fit: Mapping[str, Any]) -> str:
    """One line for a screen: the marginal J/token with its interval and the fixed power, or why none."""
    if fit.get("marginal_j_per_output_token") is None:
        return f"marginal J/out tok across the sweep: null ({fit.get('reason')})"
    mark = f" {ESTIMATE}" if fit.get("method_kind") == "estimate" else ""
    line = (
        f"marginal J/out tok across the sweep: {fit['marginal_j_per_output_token']:.4g}{mark} "
        f"[{fit['ci95_low']:.4g}, {fit['ci95_high']:.4g}] over {fit['points']} cycles of {fit['experiments']} "
        f"experiments; fixed power {fit['fixed_power_w']:.4g} W{mark} (least-squares fit of power on tok/s)"
    )
    if mark:
        line += "; the power it fits rests on an estimate, not a measurement"
        line += f": {fit['basis']}" if fit.get("basis") else ""
    return line

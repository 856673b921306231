"""Descriptive statistics without numpy or scipy: percentiles, mean, std and Student-t intervals.

lem-core has no numerical dependencies, so the few statistics it needs live
here: linear-interpolation percentiles (numpy's default), the sample standard
deviation, and the 95% confidence interval of a mean from Student's t, whose
quantile is solved from the exact distribution function.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

#: Percentiles reported for every latency distribution.
PERCENTILES = (50, 90, 95, 99)

#: Below this many samples a tail percentile (p90 and up) is mostly interpolation: warn.
MIN_SAMPLES_FOR_PERCENTILES = 30

_Z975 = 1.959963984540054


def _t_central(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with integer ``df`` > 0 and t >= 0.

    Abramowitz & Stegun 26.7.3 (odd df) and 26.7.4 (even df): finite sums, exact
    but for rounding, in theta = atan(t / sqrt(df)).
    """
    theta = math.atan(t / math.sqrt(df))
    s, c2 = math.sin(theta), math.cos(theta) ** 2
    if df == 1:
        return 2 * theta / math.pi
    odd = df % 2 == 1
    term = math.sqrt(c2) if odd else 1.0
    total = term
    for k in range(3 if odd else 2, df - 1, 2):
        term *= c2 * (k - 1) / k
        total += term
    return 2 / math.pi * (theta + s * total) if odd else s * total


def _t_density(t: float, df: int) -> float:
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return math.exp(log_norm - (df + 1) / 2 * math.log1p(t * t / df))


def _cornish_fisher_975(df: int) -> float:
    """t_{0.975, df} from its expansion around the normal quantile: error < 1e-5 at df 30, O(df^-5) beyond."""
    z = _Z975
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    return z + g1 / df + g2 / df**2 + g3 / df**3 + g4 / df**4


#: Up to this many degrees of freedom the series is solved (error < 3e-14, growing with df as its
#: rounding adds up); beyond it the expansion alone is closer (< 3e-14, falling as df^-5).
_SERIES_MAX_DF = 500


@functools.lru_cache(maxsize=64)
def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (two-sided 95%), within 3e-14.

    Newton's method on the exact distribution function (:func:`_t_central`),
    started from the Cornish-Fisher expansion; beyond 500 degrees of freedom
    the expansion alone.
    """
    if df < 1:
        raise ValueError("degrees of freedom must be >= 1")
    if df == 1:
        return math.tan(0.475 * math.pi)
    t = _cornish_fisher_975(df)
    if df > _SERIES_MAX_DF:
        return t
    for _ in range(50):
        step = (_t_central(t, df) - 0.95) / (2 * _t_density(t, df))
        t -= step
        if abs(step) <= 4 * math.ulp(t):
            break
    return t


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of already sorted values, interpolated linearly (numpy's default)."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return float(sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo))


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean (``fsum``, so long sums of small latencies stay exact), corrected once.

    ``fsum / n`` rounds twice: n copies of x can average to x +- 1 ulp, and then
    show a spread (std ~1e-17 x, a Welch t of 1e16 between two constant figures
    instead of an exact difference). One correction step, by the residual
    sum(values) - n m rounded once by ``fsum``, gives x back exactly, and
    otherwise a mean within an ulp of the exact one.
    """
    n = len(values)
    m = math.fsum(values) / n
    return m + math.fsum([*values, *[-m] * n]) / n


def std(values: Sequence[float]) -> float | None:
    """Sample standard deviation (n - 1); ``None`` for fewer than two values."""
    n = len(values)
    if n < 2:
        return None
    m = mean(values)
    return math.sqrt(math.fsum((v - m) ** 2 for v in values) / (n - 1))


def distribution(values: Sequence[float]) -> dict[str, Any]:
    """``n, mean, std, min, p50, p90, p95, p99, max`` of a latency sample; ``None`` figures when empty."""
    ordered = sorted(values)
    out: dict[str, Any] = {"n": len(ordered)}
    if not ordered:
        out.update({"mean": None, "std": None, "min": None, "max": None})
        out.update({f"p{q}": None for q in PERCENTILES})
        return out
    out.update({"mean": mean(ordered), "std": std(ordered), "min": ordered[0], "max": ordered[-1]})
    out.update({f"p{q}": percentile(ordered, q) for q in PERCENTILES})
    return out


def interval(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean, sample std and the Student-t 95% confidence interval of the mean over cycles.

    ``None`` entries (a figure a cycle could not measure) are left out and
    counted in ``missing``; with one value the interval is ``None`` (unknown,
    not zero width).
    """
    present = [float(v) for v in values if v is not None]
    out: dict[str, Any] = {"n": len(present), "missing": len(values) - len(present), "values": list(values)}
    if not present:
        out.update({"mean": None, "std": None, "ci95_low": None, "ci95_high": None})
        return out
    m = mean(present)
    s = std(present)
    out.update({"mean": m, "std": s})
    if s is None:
        out.update({"ci95_low": None, "ci95_high": None})
    else:
        half = t_quantile_975(len(present) - 1) * s / math.sqrt(len(present))
        out.update({"ci95_low": m - half, "ci95_high": m + half})
    return out


def welch_t(a: Sequence[float], b: Sequence[float]) -> tuple[float, float] | None:
    """Welch's t statistic of ``mean(b) - mean(a)`` and its Welch-Satterthwaite degrees of freedom.

    ``None`` when either sample has fewer than two values or neither has any spread (then t is undefined).
    """
    if len(a) < 2 or len(b) < 2:
        return None
    sa, sb = std(a), std(b)
    assert sa is not None and sb is not None
    va, vb = sa**2 / len(a), sb**2 / len(b)
    if va + vb == 0:
        return None
    t = (mean(b) - mean(a)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return t, df


def welch_test(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Welch's two-sided t-test at 5% of ``mean(b)`` against ``mean(a)``.

    ``{t, df, t_crit, resolved, reason}``: ``df`` is Welch-Satterthwaite's;
    the critical value is taken at ``floor(df)`` degrees of freedom, the
    conservative textbook rounding (a larger critical value). ``resolved`` is
    ``None`` with a ``reason`` when the test cannot be made (fewer than two
    values on a side); with no spread on either side, the means are exact and
    ``resolved`` says whether they differ.
    """
    out: dict[str, Any] = {"t": None, "df": None, "t_crit": None, "resolved": None, "reason": None}
    if len(a) < 2 or len(b) < 2:
        out["reason"] = f"needs at least 2 cycles on each side ({len(a)} and {len(b)})"
        return out
    try:
        got = welch_t(a, b)
    except OverflowError:  # values near the largest double (a damaged file's): their spread is beyond it
        out["reason"] = "the values are too large to test (their spread is beyond the range of a double)"
        return out
    if got is None:
        out["resolved"] = mean(a) != mean(b)
        out["reason"] = "no spread on either side: the difference is exact"
        return out
    t, df = got
    # df in floats can land a hair under the whole number it equals (equal spreads over equal counts give
    # exactly 2(n - 1)); the relative nudge keeps floor() from dropping a whole degree for rounding.
    crit = t_quantile_975(max(1, math.floor(df * (1 + 1e-9))))
    out.update({"t": t, "df": df, "t_crit": crit, "resolved": abs(t) > crit})
    return out

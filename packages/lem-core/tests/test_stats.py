"""Statistics without scipy: percentiles, std and the Student-t interval, against hand-computed values."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lem.figures.stats import distribution, interval, mean, percentile, std, t_quantile_975, welch_test

# Published t_{0.975} quantiles (any statistics table, 4 decimals) beyond the closed forms below.
TABLE = {1: 12.7062, 2: 4.3027, 10: 2.2281, 30: 2.0423, 40: 2.0211, 60: 2.0003, 120: 1.9799}


@pytest.mark.parametrize(("df", "expected"), TABLE.items())
def test_t_quantile_matches_tables(df: int, expected: float) -> None:
    assert t_quantile_975(df) == pytest.approx(expected, abs=5e-5)


def test_t_quantile_has_the_closed_forms_of_one_two_and_four_degrees_of_freedom() -> None:
    p = 0.975
    assert math.isclose(t_quantile_975(1), math.tan(math.pi * (p - 0.5)), rel_tol=1e-14)
    assert math.isclose(t_quantile_975(2), (2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel_tol=1e-14)
    alpha = 4 * p * (1 - p)
    q = math.cos(math.acos(math.sqrt(alpha)) / 3) / math.sqrt(alpha)
    assert math.isclose(t_quantile_975(4), 2 * math.sqrt(q - 1), rel_tol=1e-14)


def _simpson(f: Callable[[float], float], a: float, b: float, n: int = 4000) -> float:
    h = (b - a) / n
    inner = sum((4 if i % 2 else 2) * f(a + i * h) for i in range(1, n))
    return h / 3 * (f(a) + inner + f(b))


@pytest.mark.parametrize("df", [3, 7, 30, 120, 499, 501, 5000])
def test_t_quantile_leaves_two_and_a_half_percent_in_each_tail(df: int) -> None:
    # The density integrated numerically (Simpson), not the series lem solves: P(0 < T < t) must be 0.475.
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def density(x: float) -> float:
        return math.exp(log_norm - (df + 1) / 2 * math.log1p(x * x / df))

    assert _simpson(density, 0.0, t_quantile_975(df)) == pytest.approx(0.475, abs=1e-12)


def test_t_quantile_tends_to_normal_and_decreases() -> None:
    values = [t_quantile_975(df) for df in range(1, 700)]
    assert all(a > b for a, b in itertools.pairwise(values))
    z = 1.959963984540054  # the normal quantile, approached from above as 1 / df
    assert z < t_quantile_975(100_000) < z + 3e-5
    with pytest.raises(ValueError):
        t_quantile_975(0)


def test_percentile_interpolates_like_numpy() -> None:
    values = [1.0, 2.0, 3.0, 4.0]
    # numpy.percentile([1, 2, 3, 4], [50, 90]) == [2.5, 3.7]
    assert percentile(values, 50) == pytest.approx(2.5)
    assert percentile(values, 90) == pytest.approx(3.7)
    assert percentile([5.0], 99) == 5.0


def test_interval_by_hand() -> None:
    # mean 2, sample std 1, n = 3: half width = t(2) * 1 / sqrt(3)
    out = interval([1.0, 2.0, 3.0])
    half = 4.3027 / math.sqrt(3)
    assert out["mean"] == pytest.approx(2.0)
    assert out["std"] == pytest.approx(1.0)
    assert out["ci95_low"] == pytest.approx(2.0 - half, abs=1e-4)
    assert out["ci95_high"] == pytest.approx(2.0 + half, abs=1e-4)


def test_interval_unknowns_are_none_not_zero() -> None:
    one = interval([5.0])
    assert one["mean"] == 5.0 and one["std"] is None and one["ci95_low"] is None
    missing = interval([None, None])
    assert missing["mean"] is None and missing["missing"] == 2
    assert interval([None, 1.0, 3.0])["n"] == 2


def test_distribution_of_nothing_is_none() -> None:
    d = distribution([])
    assert d["n"] == 0 and d["p99"] is None and d["mean"] is None


@given(st.lists(st.floats(min_value=-1e6, max_value=1e6), min_size=2, max_size=50))
def test_interval_contains_mean_and_percentiles_are_ordered(values: list[float]) -> None:
    out = interval(values)
    assert out["ci95_low"] <= out["mean"] + 1e-6 and out["mean"] <= out["ci95_high"] + 1e-6
    d = distribution(values)
    assert d["min"] <= d["p50"] <= d["p90"] <= d["p95"] <= d["p99"] <= d["max"]
    assert std(values) is not None


@given(st.floats(min_value=-1e300, max_value=1e300), st.integers(min_value=2, max_value=40))
def test_a_figure_the_same_in_every_cycle_has_no_spread(x: float, n: int) -> None:
    """fsum/n alone gives 0.212439836 x 3 a mean 1 ulp off and a std of 1e-17: a Welch t of 1e16, not exact."""
    out = interval([x] * n)
    assert out["mean"] == x and out["std"] == 0 and out["ci95_low"] == out["ci95_high"] == x
    verdict = welch_test([x] * n, [x * 2 if x else 1.0] * n)
    assert verdict["t"] is None and verdict["resolved"] is True and "no spread" in verdict["reason"]


@given(st.lists(st.floats(min_value=0.5, max_value=3.0), min_size=2, max_size=12, unique=True))
def test_equal_spreads_over_equal_counts_take_the_critical_t_of_their_exact_df(values: list[float]) -> None:
    """Equal spreads and counts give a Welch-Satterthwaite df of exactly 2(n - 1); floats can land at
    3.9999999999999996 for n = 3 (seen in CI: 2.8684..., 1.4257..., 2.6789...), and floor() must not drop a degree."""
    verdict = welch_test(values, list(values))
    n = len(values)
    assert math.isclose(verdict["df"], 2 * (n - 1), rel_tol=1e-12)
    assert verdict["t_crit"] == t_quantile_975(2 * (n - 1)) and verdict["resolved"] is False


def test_the_float_df_seen_in_ci_keeps_its_degree() -> None:
    values = [2.86843080974698, 1.4257509218615128, 2.6789442806739787]
    verdict = welch_test(values, list(values))
    assert verdict["df"] < 4 and verdict["t_crit"] == t_quantile_975(4)


@given(st.lists(st.floats(min_value=-1e6, max_value=1e6), min_size=1, max_size=50))
def test_mean_is_within_an_ulp_of_the_exact_mean(values: list[float]) -> None:
    exact = sum(map(Fraction, values)) / len(values)
    assert abs(Fraction(mean(values)) - exact) <= Fraction(math.ulp(float(exact)))

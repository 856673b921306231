"""Statistics without scipy: percentiles, std and the Student-t interval, against hand-computed values."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lem.stats import distribution, interval, percentile, std, t_quantile_975

# Published t_{0.975} quantiles (any statistics table) beyond the built-in table.
TABLE = {1: 12.7062, 2: 4.3027, 10: 2.2281, 30: 2.0423, 40: 2.0211, 60: 2.0003, 120: 1.9799}


@pytest.mark.parametrize(("df", "expected"), TABLE.items())
def test_t_quantile_matches_tables(df: int, expected: float) -> None:
    assert t_quantile_975(df) == pytest.approx(expected, abs=1e-4)


def test_t_quantile_tends_to_normal_and_decreases() -> None:
    values = [t_quantile_975(df) for df in range(1, 500)]
    assert all(a > b for a, b in itertools.pairwise(values))
    assert t_quantile_975(100_000) == pytest.approx(1.95996, abs=1e-4)
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

"""Arrival patterns: offline, constant, Poisson (seeded), closed loop."""

from __future__ import annotations

import pytest

from lem.config import TrafficConfig
from lem.prompts.promptset import Prompt
from lem.run.traffic import arrival_offsets_ns, cycle_seed, make_requests


def test_offline_all_at_zero_and_closed_loop_has_no_arrivals() -> None:
    assert arrival_offsets_ns(TrafficConfig("offline"), 4, 0) == [0, 0, 0, 0]
    assert arrival_offsets_ns(TrafficConfig("concurrency", concurrency=2), 4, 0) is None


def test_constant_rate_spacing() -> None:
    assert arrival_offsets_ns(TrafficConfig("constant", rate=4.0), 3, 0) == [0, 250_000_000, 500_000_000]


def test_poisson_is_seeded_and_has_the_right_rate() -> None:
    t = TrafficConfig("poisson", rate=10.0)
    a = arrival_offsets_ns(t, 2000, 7)
    assert a == arrival_offsets_ns(t, 2000, 7)
    assert a != arrival_offsets_ns(t, 2000, 8)
    assert a is not None and a[0] == 0 and a == sorted(a)
    mean_gap_s = a[-1] / 1e9 / (len(a) - 1)
    assert mean_gap_s == pytest.approx(0.1, rel=0.1)


def test_cycles_draw_different_but_reproducible_patterns() -> None:
    assert cycle_seed(42, 1) != cycle_seed(42, 2)
    assert cycle_seed(42, 1) == cycle_seed(42, 1)


def test_make_requests_carries_prompts_and_arrivals() -> None:
    prompts = [Prompt("a b", (1, 2), 2), Prompt("c", None, 1)]
    reqs = make_requests(prompts, [0, 5], t0_ns=100, first_id=10)
    assert [(r.id, r.arrival_ns, r.input_tokens, r.prompt_token_ids) for r in reqs] == [
        (10, 100, 2, (1, 2)),
        (11, 105, 1, None),
    ]
    assert all(r.arrival_ns is None for r in make_requests(prompts, None))
    with pytest.raises(ValueError):
        make_requests(prompts, [0])

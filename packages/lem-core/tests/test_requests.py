"""Per-request and per-cycle figures (lem.figures.requests) against hand-computed values, plus hypothesis properties."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lem.figures.requests import RequestTrace, collect, cycle_metrics, request_metrics
from lem.types import Request, TokenEvent

MS = 1_000_000


def test_request_metrics_by_hand() -> None:
    # Arrives at 0; tokens at 10, 12, 15 ms: TTFT 10 ms, ITLs 2 and 3 ms, E2E 15 ms, TPOT (15-10)/2 = 2.5 ms.
    tr = RequestTrace(0, 7, 0, ((10 * MS, 1), (12 * MS, 1), (15 * MS, 1)), True)
    m = request_metrics(tr)
    assert m["ttft_s"] == pytest.approx(0.010)
    assert m["itl_s"] == pytest.approx([0.002, 0.003])
    assert m["e2e_s"] == pytest.approx(0.015)
    assert m["tpot_s"] == pytest.approx(0.0025)
    assert (m["input_tokens"], m["output_tokens"]) == (7, 3)


def test_multi_token_events_split_the_gap() -> None:
    # 2 tokens at 10 ms, then 3 tokens at 16 ms: ITLs 0 (came with the first), then 2, 2, 2 ms.
    m = request_metrics(RequestTrace(0, 1, 0, ((10 * MS, 2), (16 * MS, 3)), True))
    assert m["itl_s"] == pytest.approx([0.0, 0.002, 0.002, 0.002])
    assert m["output_tokens"] == 5
    assert m["tpot_s"] == pytest.approx(0.006 / 4)


def test_single_token_has_no_tpot_and_unknown_origin_no_latency() -> None:
    assert request_metrics(RequestTrace(0, 1, 0, ((5 * MS, 1),), True))["tpot_s"] is None
    m = request_metrics(RequestTrace(0, 1, None, ((5 * MS, 1),), True))
    assert m["ttft_s"] is None and m["e2e_s"] is None


def test_collect_uses_submission_event_under_closed_loop() -> None:
    reqs = [Request(0, "a", 3), Request(1, "b", 4, arrival_ns=100)]
    events = [
        TokenEvent(0, 50, 0),  # submitted at 50: the closed-loop origin
        TokenEvent(1, 120, 0),  # arrival already known: the arrival stays the origin
        TokenEvent(0, 70, 1),
        TokenEvent(1, 150, 2, finished=True),
        TokenEvent(0, 90, 1, finished=True),
    ]
    seen: list[int] = []
    traces = collect(reqs, events, on_finished=seen.append)
    assert traces[0].origin_ns == 50 and traces[0].events == ((70, 1), (90, 1))
    assert traces[1].origin_ns == 100 and traces[1].finished
    assert seen == [1, 2]
    with pytest.raises(RuntimeError, match="unknown request"):
        collect(reqs, [TokenEvent(9, 1, 1)])


def test_cycle_metrics_by_hand() -> None:
    traces = [
        RequestTrace(0, 10, 0, ((10 * MS, 1), (20 * MS, 1)), True),
        RequestTrace(1, 20, 0, ((30 * MS, 1), (50 * MS, 1)), True),
    ]
    m, warnings = cycle_metrics(traces, 0.5)
    assert m["output_tokens"] == 4 and m["input_tokens"] == 30
    assert m["output_tokens_per_s"] == pytest.approx(8.0)
    assert m["total_tokens_per_s"] == pytest.approx(68.0)
    assert m["requests_per_s"] == pytest.approx(4.0)
    assert m["ttft_s"]["p50"] == pytest.approx(0.020)  # between 10 and 30 ms
    assert m["itl_s"]["mean"] == pytest.approx(0.015)
    assert m["flops"]["method"] is None and m["flops"]["reason"]
    assert any("fewer than 30 samples: ttft_s (2)" in w for w in warnings)


def test_unfinished_requests_are_warned() -> None:
    _, warnings = cycle_metrics([RequestTrace(0, 1, 0, ((1, 1),), False)], 1.0)
    assert any("did not finish" in w for w in warnings)


gaps = st.lists(st.tuples(st.integers(0, 10**8), st.integers(1, 4)), min_size=1, max_size=20)


@given(st.integers(0, 10**9), st.integers(0, 10**8), gaps)
def test_latency_properties(origin: int, first_gap: int, steps: list[tuple[int, int]]) -> None:
    t = origin + first_gap
    events = []
    for gap, n in steps:
        t += gap
        events.append((t, n))
    m = request_metrics(RequestTrace(0, 1, origin, tuple(events), True))
    assert m["ttft_s"] <= m["e2e_s"]
    assert len(m["itl_s"]) == m["output_tokens"] - 1
    assert sum(m["itl_s"]) == pytest.approx((events[-1][0] - events[0][0]) / 1e9, abs=1e-9)


@given(st.lists(gaps, min_size=1, max_size=5), st.floats(0.01, 100.0))
def test_throughput_times_window_is_tokens(per_request: list[list[tuple[int, int]]], duration: float) -> None:
    traces = [
        RequestTrace(i, 3, 0, tuple((1 + sum(g for g, _ in steps[: j + 1]), n) for j, (_, n) in enumerate(steps)), True)
        for i, steps in enumerate(per_request)
    ]
    m, _ = cycle_metrics(traces, duration)
    assert m["output_tokens_per_s"] * duration == pytest.approx(m["output_tokens"])
    assert m["total_tokens_per_s"] * duration == pytest.approx(m["output_tokens"] + m["input_tokens"])

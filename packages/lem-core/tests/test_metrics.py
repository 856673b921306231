"""Per-request, per-cycle and energy figures against hand-computed values, plus hypothesis properties."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lem.figures.metrics import (
    PEAK_FROM_TIMELINE,
    PEAK_ONE_DEVICE,
    PEAK_SUM_OF_PEAKS,
    RequestTrace,
    collect,
    cycle_metrics,
    energy_figures,
    idle_power,
    peak_total_power,
    request_metrics,
)
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


def _window(duration: float, *energies: float | None, peak: float | None = 400.0) -> dict:
    return {
        "duration_s": duration,
        "devices": [
            {
                "device": i,
                "uuid": f"GPU-{i}",
                "energy_j": e,
                "method": "counter",
                "reason": None if e is not None else "broken",
                "mean_power_w": None,
                "peak_power_w": peak,
            }
            for i, e in enumerate(energies)
        ],
        "warnings": [],
    }


def test_energy_by_hand() -> None:
    idle = idle_power(_window(2.0, 200.0, 300.0))  # 100 W and 150 W
    assert idle == {0: 100.0, 1: 150.0}
    e, warnings = energy_figures(_window(4.0, 1000.0, 1200.0), None, idle, None, output_tokens=100)
    assert e["total_j"] == pytest.approx(2200.0)
    assert e["idle_j"] == pytest.approx(1000.0)  # (100 + 150) W × 4 s
    assert e["dynamic_j"] == pytest.approx(1200.0)
    assert e["j_per_output_token"] == pytest.approx(22.0)
    assert e["dynamic_j_per_output_token"] == pytest.approx(12.0)
    assert e["output_tokens_per_j"] == pytest.approx(100 / 2200)
    assert e["mean_power_w"] == pytest.approx(550.0)
    assert e["peak_power_w"] == pytest.approx(800.0)
    assert e["method"] == "counter"
    assert [d["dynamic_j"] for d in e["devices"]] == pytest.approx([600.0, 600.0])
    assert warnings == []


def test_no_meter_is_null_with_reason_never_zero() -> None:
    e, _ = energy_figures(None, "no energy meter available here", None, "no meter", output_tokens=10)
    assert e["total_j"] is None and e["j_per_output_token"] is None
    assert e["reason"] == "no energy meter available here"
    e, _ = energy_figures(_window(2.0, None), None, None, None, output_tokens=10)
    assert e["total_j"] is None and e["reason"] == "broken"


def test_short_window_and_missing_idle() -> None:
    e, warnings = energy_figures(_window(0.2, 50.0), None, None, "idle baseline skipped", output_tokens=5)
    assert e["total_j"] == 50.0 and e["idle_j"] is None and e["dynamic_j"] is None
    assert e["idle_reason"] == "idle baseline skipped"
    assert any("shorter than 1 s" in w for w in warnings)


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


@given(st.floats(0.1, 1e4), st.floats(0.0, 1e6), st.floats(0.0, 1e3), st.integers(0, 10**6))
def test_dynamic_is_total_minus_idle(duration: float, total: float, idle_w: float, tokens: int) -> None:
    e, _ = energy_figures(_window(duration, total), None, {0: idle_w}, None, output_tokens=tokens)
    assert e["dynamic_j"] == pytest.approx(e["total_j"] - e["idle_j"])
    assert e["idle_j"] == pytest.approx(idle_w * duration)


def test_peak_power_of_one_device_is_its_own_peak() -> None:
    e, _ = energy_figures(_window(4.0, 1000.0, peak=450.0), None, None, None, output_tokens=10)
    assert e["peak_power_w"] == pytest.approx(450.0)
    assert e["peak_power_method"] == PEAK_ONE_DEVICE


def test_peak_power_of_several_devices_without_timeline_is_a_labelled_upper_bound() -> None:
    e, _ = energy_figures(_window(4.0, 1000.0, 1200.0), None, None, None, output_tokens=10)
    assert e["peak_power_w"] == pytest.approx(800.0)  # 400 + 400, whether or not they coincided
    assert e["peak_power_method"] == PEAK_SUM_OF_PEAKS


def test_peak_total_power_interpolates_devices_to_common_instants() -> None:
    # GPU 0 peaks at 500 W at t=1.0 while GPU 1 sits at 100 W; GPU 1 peaks at 500 W
    # at t=2.05 while GPU 0 is back at 100 W. Sum of peaks: 1000 W; real peak 600 W.
    timeline = [
        {"t_s": 0.0, "device": 0, "power_w": 100.0},
        {"t_s": 0.05, "device": 1, "power_w": 100.0},
        {"t_s": 1.0, "device": 0, "power_w": 500.0},
        {"t_s": 1.05, "device": 1, "power_w": 100.0},
        {"t_s": 2.0, "device": 0, "power_w": 100.0},
        {"t_s": 2.05, "device": 1, "power_w": 500.0},
        {"t_s": 3.0, "device": 0, "power_w": None},  # a failed read is skipped
    ]
    peak = peak_total_power(timeline, [0, 1])
    # at t=1.0, GPU 1 is interpolated between (0.05, 100) and (1.05, 100): 100; at t=2.05 GPU 0 is held at 100
    assert peak == pytest.approx(600.0)
    # at t=2.0 GPU 1 is on its way up (100 + 400 * 0.95 = 480) and GPU 0 is at 100: 580, not the peak
    assert peak_total_power(timeline, [0, 2]) is None  # GPU 2 has no sample
    window = {**_window(4.0, 1000.0, 1200.0), "peak_power_w": peak}
    e, _ = energy_figures(window, None, None, None, output_tokens=10)
    assert e["peak_power_w"] == pytest.approx(600.0)
    assert e["peak_power_method"] == PEAK_FROM_TIMELINE


def test_peak_total_power_between_samples() -> None:
    timeline = [
        {"t_s": 0.0, "device": 0, "power_w": 200.0},
        {"t_s": 1.0, "device": 0, "power_w": 400.0},
        {"t_s": 0.5, "device": 1, "power_w": 300.0},
    ]
    # at t=0.5 GPU 0 is interpolated to 300: total 600; at t=1.0 GPU 1 is held at 300: total 700
    assert peak_total_power(timeline, [0, 1]) == pytest.approx(700.0)

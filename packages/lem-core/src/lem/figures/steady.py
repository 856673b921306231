"""The steady-state window of a cycle, and energy integrated from a meter's power timeline over an interval.

Steady state (ML.ENERGY's definition for engines that batch continuously): the
engine holds its maximum number of concurrent sequences, and the queue has not
started to drain. From the traces alone:

- a request is *running* from its first token-bearing event to its last one
  (the engine holds its sequence while it decodes; admission itself is not
  observable from outside the engine, its first token is the closest sign);
- ``max_in_flight`` is the highest number of requests running at once;
- the window opens the first time that number is reached, and closes at the
  first moment the number drops below it once no request is still to be
  admitted (the last request has started); when the count is already below
  the maximum at that moment (a last, smaller batch), the window closes at the
  last drop below the maximum before it.

Energy in the window comes from the power timeline, integrated over the
window (the energy counter is read only at the window's edges, so it cannot
be split): it is labelled as such. Timeline ``t_s`` counts from the meter
window's opening; token times count from the cycle's start, ``offset_s``
later.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from lem.figures.energy import DeviceKey, device_key, power_at
from lem.figures.requests import RequestTrace

NS = 1e9
#: Fewer power samples than this per device inside the window: its energy is not given.
MIN_SAMPLES = 5
#: The label of energy integrated from the timeline.
TIMELINE_METHOD = (
    "power timeline integrated over the interval (trapezoids, interpolated at its edges): the energy counter "
    "is read only at the window's edges"
)
DEFINITION = (
    "from the first moment the number of requests running (first to last token) reaches its maximum until it "
    "first drops below it once the last request has started (ML.ENERGY's steady state)"
)


def power_series(timeline: Iterable[Mapping[str, Any]]) -> dict[DeviceKey, list[tuple[float, float]]]:
    """Sorted ``(t_s, power_w)`` per device of a timeline (rows without power are skipped)."""
    series: dict[DeviceKey, list[tuple[float, float]]] = {}
    for row in timeline:
        # A cell that is not a number (a damaged CSV) is skipped like a missing one.
        if not all(_number(row.get(k)) for k in ("power_w", "t_s")) or not isinstance(row.get("device"), int):
            continue
        series.setdefault(device_key(row), []).append((float(row["t_s"]), float(row["power_w"])))
    for points in series.values():
        points.sort()
    return series


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def integrate(points: Sequence[tuple[float, float]], a: float, b: float) -> float:
    """Joules of a piecewise-linear power curve (held flat beyond its samples) from ``a`` to ``b`` seconds."""
    if b <= a or not points:
        return 0.0
    knots = [a, *(t for t, _ in points if a < t < b), b]
    return sum((t1 - t0) * (power_at(points, t0) + power_at(points, t1)) / 2 for t0, t1 in itertools.pairwise(knots))


def interval_energy(
    series: Mapping[DeviceKey, Sequence[tuple[float, float]]], a: float, b: float
) -> tuple[float | None, str | None]:
    """Energy of every device together over ``[a, b]`` (timeline seconds), or ``None`` and why."""
    if not series:
        return None, "the meter's timeline has no power samples"
    for key, points in series.items():
        inside = sum(1 for t, _ in points if a <= t <= b)
        if inside < MIN_SAMPLES:
            return None, (
                f"only {inside} power sample(s) of device {key} fall in the {b - a:.3f} s interval (at least "
                f"{MIN_SAMPLES} are needed): too short for the timeline (measurement.sampling_interval_ms)"
            )
    return float(sum(integrate(points, a, b) for points in series.values())), None


def running_intervals(traces: Sequence[RequestTrace]) -> list[tuple[int, int]]:
    """``(first token ns, last token ns)`` of every request that produced a token."""
    return [(t.events[0][0], t.events[-1][0]) for t in traces if t.events]


def steady_bounds(traces: Sequence[RequestTrace]) -> tuple[int, int, int] | None:
    """``(start_ns, end_ns, max_in_flight)`` of the steady-state window (see the module), or ``None``."""
    spans = running_intervals(traces)
    if not spans:
        return None
    # At one instant, starts count before ends: a one-token request is running at its instant.
    edges = sorted([(s, 0, +1) for s, _ in spans] + [(e, 1, -1) for _, e in spans])
    count, peak, start = 0, 0, None
    for t, _, step in edges:
        count += step
        if count > peak:
            peak, start = count, t
    last_admit = max(s for s, _ in spans)
    count, drops = 0, []
    for t, _, step in edges:
        before = count
        count += step
        if before == peak and count < peak:
            drops.append(t)
    after = [t for t in drops if t >= last_admit]
    before_admit = [t for t in drops if t < last_admit]
    end = after[0] if after else (before_admit[-1] if before_admit else None)
    if start is None or end is None:
        return None
    return start, end, peak


def steady_state(
    traces: Sequence[RequestTrace], timeline: Sequence[Mapping[str, Any]] | None, offset_s: float
) -> dict[str, Any]:
    """The steady-state block of a cycle: bounds, tokens, throughput, and energy and J/token from the timeline."""
    out: dict[str, Any] = {
        "definition": DEFINITION,
        "start_s": None,
        "end_s": None,
        "duration_s": None,
        "max_in_flight": None,
        "output_tokens": None,
        "output_tokens_per_s": None,
        "energy_j": None,
        "j_per_output_token": None,
        "energy_method": None,
        "reason": None,
        "energy_reason": None,
    }
    bounds = steady_bounds(traces)
    if bounds is None:
        out["reason"] = "no steady state: no request produced a token"
        return out
    start, end, peak = bounds
    tokens = sum(n for t in traces for ts, n in t.events if start < ts <= end)
    out.update({"start_s": start / NS, "end_s": end / NS, "duration_s": (end - start) / NS, "max_in_flight": peak})
    if end <= start or tokens == 0:
        out["reason"] = "the steady-state window is empty (no token was produced inside it)"
        return out
    out["output_tokens"] = tokens
    out["output_tokens_per_s"] = tokens / ((end - start) / NS)
    if timeline is None:
        out["energy_reason"] = "no power timeline for this cycle"
        return out
    energy, why = interval_energy(power_series(timeline), start / NS + offset_s, end / NS + offset_s)
    out["energy_reason"] = why
    if energy is not None:
        out.update({"energy_j": energy, "j_per_output_token": energy / tokens, "energy_method": TIMELINE_METHOD})
    return out
